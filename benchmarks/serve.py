"""Serve one contender's app with waitress on loopback; run by concurrency.py.

Usage: python benchmarks/serve.py PORT THREADS SPEC_JSON
"""

from __future__ import annotations

import logging
import sys

import waitress
from apps import build_app
from apps import Spec


def main() -> None:
    port, threads, spec = int(sys.argv[1]), int(sys.argv[2]), Spec.from_json(sys.argv[3])
    app = build_app(spec)
    # A busy server is the point of the exercise; waitress would log each queued task.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    waitress.serve(app, host="127.0.0.1", port=port, threads=threads, _quiet=True)


if __name__ == "__main__":
    main()
