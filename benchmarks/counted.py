"""Run one contender's requests between markers, for callgrind; run by instructions.py.

Usage: python benchmarks/counted.py SPEC_JSON N SCENARIO...

For each scenario, after a warm-up, three markers close three segments:
the one before (warm-up, setup), ``N`` requests, and ``5 * N`` requests.
A marker is a call of ``getppid``, which nothing else on these paths calls;
callgrind, run with ``--dump-before=getppid``, writes its counts at each one.
With ``BENCH_NO_HIREDIS=1`` in the environment, redis-py cannot import
hiredis and parses replies in Python.
"""

from __future__ import annotations

import gc
import os
import sys
import typing as t

if os.environ.get("BENCH_NO_HIREDIS") == "1":
    sys.modules["hiredis"] = None  # type: ignore[assignment]

from apps import build_app
from apps import check_ok
from apps import close_app
from apps import make_environ
from apps import seed_session
from apps import Spec
from flask import Flask

#: Markers (callgrind dumps) per scenario.
MARKERS = 3


def marker() -> None:
    """Close a callgrind segment."""
    os.getppid()


def requests(app: Flask, environ: dict[str, t.Any], n: int) -> None:
    wsgi: t.Any = app
    for _ in range(n):
        result = wsgi(environ.copy(), _start_response)
        for _chunk in result:
            pass
        result.close()


def _start_response(status: str, headers: t.Any, exc_info: t.Any = None) -> None:
    return None


def main() -> None:
    spec, n, scenarios = Spec.from_json(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    app = build_app(spec)
    try:
        cookie = seed_session(app)
        for scenario in scenarios:
            environ = make_environ(f"/{scenario}", None if scenario == "new" else cookie)
            check_ok(app, environ)
            requests(app, environ, n)
            # Objects made so far are never collected: later collections
            # scan only what the measured requests leave behind.
            gc.collect()
            gc.freeze()
            marker()
            requests(app, environ, n)
            marker()
            requests(app, environ, 5 * n)
            marker()
            check_ok(app, environ)
        print("ok", flush=True)
    finally:
        close_app(app)


if __name__ == "__main__":
    main()
