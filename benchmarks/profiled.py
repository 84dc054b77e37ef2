"""Call one contender's app in a loop for a profiler; run by profiling.py.

Usage: python benchmarks/profiled.py SPEC_JSON SCENARIO SECONDS MAX_REQUESTS

Setup (building the app, seeding a session, warming up) happens before
``timed``; the profile keeps only samples taken inside ``timed``.
"""

from __future__ import annotations

import sys
import time
import typing as t

from apps import build_app
from apps import check_ok
from apps import close_app
from apps import make_environ
from apps import seed_session
from apps import Spec
from flask import Flask

WARM_UP = 200


def drive(app: Flask, environ: dict[str, t.Any], seconds: float, limit: int) -> int:
    """Call the app until ``seconds`` pass or ``limit`` requests are done; return the count."""
    deadline = time.monotonic() + seconds
    wsgi: t.Any = app
    done = 0
    while done < limit and time.monotonic() < deadline:
        for _ in range(50):
            result = wsgi(environ.copy(), _start_response)
            for _chunk in result:
                pass
            result.close()
        done += 50
    return done


def timed(app: Flask, environ: dict[str, t.Any], seconds: float, limit: int) -> int:
    """The loop the profile keeps: warm-up and setup samples fall outside it."""
    return drive(app, environ, seconds, limit)


def _start_response(status: str, headers: t.Any, exc_info: t.Any = None) -> None:
    return None


def main() -> None:
    spec, scenario = Spec.from_json(sys.argv[1]), sys.argv[2]
    seconds, limit = float(sys.argv[3]), int(sys.argv[4])
    app = build_app(spec)
    try:
        cookie = seed_session(app)
        environ = make_environ(f"/{scenario}", None if scenario == "new" else cookie)
        check_ok(app, environ)
        drive(app, environ, 60.0, WARM_UP)
        done = timed(app, environ, seconds, limit)
        print(f"{done} requests", flush=True)
    finally:
        close_app(app)


if __name__ == "__main__":
    main()
