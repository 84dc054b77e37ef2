"""CPU instructions of the steps of one request, counted by callgrind: where a request's count goes.

Usage: python benchmarks/steps.py BACKEND [LOCATION] [STEP ...]

BACKEND is ``memory``, ``filesystem`` (LOCATION: an empty directory) or
``redis`` (LOCATION: a loopback URL such as ``redis://127.0.0.1:6379/0``).
It runs itself under ``valgrind --tool=callgrind`` and prints, for each step,
the instructions of one call: ``(total(5N) - total(N)) / 4N`` with N = 20, as
the instructions section does for whole requests. Steps are whole requests
(``request:read`` ...; ``request:renew`` is a write of a permanent session
whose expiry moves, so that the response sets the cookie again), parts of
one (``tokens.check``, ``decode`` ...) and a session opened, used and saved
(``session:read``, ``session:write``); with none given, every step is
counted. A change to one part shows up in its own line, whatever else the
machine runs.
"""

from __future__ import annotations

import gc
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import typing as t
from datetime import timedelta

from apps import build_app
from apps import make_environ
from apps import seed_session
from apps import Spec
from instructions import dump_totals

if t.TYPE_CHECKING:
    from flask import Flask

N = 20
_CHILD = "BENCH_STEPS_CHILD"


def steps(backend: str, location: str) -> dict[str, t.Callable[[], object]]:
    """The steps of a request on ``backend``, each a callable that runs one of it."""
    from flask import request

    from flask_serversession.backends.base import Delta
    from flask_serversession.stored import changes
    from flask_serversession.stored import decode

    app = build_app(Spec("fss", backend, location))
    cookie = seed_session(app)
    interface = app.session_interface
    store = interface.store  # type: ignore[attr-defined]
    sid = store.tokens.check(cookie)[0]
    key = store.storage_key(sid)
    record = store.backend.load(key)
    stored = store.open(cookie).stored
    written = dict(stored.values, counter=stored.values.get("counter", 0) + 1)
    # Parts that need a request run inside one, as a view's code does.
    context = app.test_request_context("/read", headers={"Cookie": f"session={cookie}"})
    context.push()

    # Permanent sessions whose every write pushes the expiry, so that the
    # response sets the cookie again: what a "remember me" session does.
    day = timedelta(days=1)
    renewing = {
        "SERVERSESSION_PERMANENT": True,
        "SERVERSESSION_EXPIRE_TIME": day,
        "SERVERSESSION_RENEW_TIME": day,
    }
    renewing_app = build_app(Spec("fss", backend, location, extra=renewing))
    renewing_cookie = seed_session(renewing_app)

    def request_of(
        path: str, with_cookie: bool = True, on: Flask | None = None
    ) -> t.Callable[[], None]:
        target = app if on is None else on
        token = cookie if on is None else renewing_cookie
        environ = make_environ(path, token if with_cookie else None)

        def run() -> None:
            result = target(environ.copy(), lambda *args: None)
            for _chunk in result:
                pass
            result.close()

        return run

    def save(view: t.Callable[[t.Any], None]) -> t.Callable[[], None]:
        def run() -> None:
            session = interface.open_session(app, request)
            view(session)
            interface.save_session(app, session, app.response_class("ok"))

        return run

    counter = itertools.count(1)
    ids = itertools.cycle([sid, store.new_sid()])

    def write(session: t.Any) -> None:
        # A new value each time, as the app's /write view: the same one would save nothing.
        session["counter"] = next(counter)

    return {
        "request:untouched": request_of("/untouched"),
        "request:read": request_of("/read"),
        "request:write": request_of("/write"),
        "request:new": request_of("/new", with_cookie=False),
        "request:renew": request_of("/write", on=renewing_app),
        "open_session": lambda: interface.open_session(app, request),
        "tokens.check": lambda: store.tokens.check(cookie),
        # Two ids in turn: each token is signed anew, as for a new session.
        "token_for": lambda: store.token_for(next(ids)),
        "storage_key": lambda: store.storage_key(sid),
        "backend.load": lambda: store.backend.load(key),
        "decode": lambda: decode(store.serializer, sid, key, record, store.check_meta),
        "store.open": lambda: store.open(cookie),
        "changes:read": lambda: changes(stored, stored.values, set(), store.serialize),
        "changes:write": lambda: changes(stored, written, {"counter"}, store.serialize),
        "backend.update": lambda: store.backend.update(
            key, Delta(store.clock() + timedelta(hours=1), {"counter": "5"}), store.clock()
        ),
        "session:read": save(lambda session: session.get("user_id")),
        "session:write": save(write),
    }


def child(backend: str, location: str, names: list[str]) -> None:
    """Run each step N and 5N times between markers (``getppid``) that callgrind dumps at."""
    available = steps(backend, location)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise SystemExit(f"unknown steps {unknown}; steps: {', '.join(available)}")
    for name in names:
        counted(available[name])


def counted(step: t.Callable[[], object], n: int = N) -> None:
    """Run ``step`` n times to warm up, then n and 5n times between markers.

    Each marker is a ``getppid`` call, at which callgrind (run with
    ``--dump-before=getppid``) writes its totals: one call of the step costs
    ``(total(5n) - total(n)) / 4n``.
    """
    for _ in range(n):
        step()
    gc.collect()
    gc.freeze()
    os.getppid()
    for _ in range(n):
        step()
    os.getppid()
    for _ in range(5 * n):
        step()
    os.getppid()


def main(argv: list[str]) -> int:
    if len(argv) < 1:
        print(__doc__, file=sys.stderr)
        return 2
    backend, rest = argv[0], argv[1:]
    location = rest.pop(0) if backend != "memory" and rest else ""
    if os.environ.get(_CHILD) == "1":
        child(backend, location, rest)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    names = rest or _all_names()
    directory = tempfile.mkdtemp(prefix="serversession-steps-")
    try:
        out = os.path.join(directory, "callgrind.out")
        argv_child = [
            "valgrind", "--tool=callgrind", "--dump-before=getppid",
            f"--callgrind-out-file={out}", sys.executable, os.path.abspath(__file__),
            backend, *([location] if location else []), *names,
        ]  # fmt: skip
        env = dict(os.environ, PYTHONHASHSEED="0", **{_CHILD: "1"})
        done = subprocess.run(argv_child, capture_output=True, text=True, env=env, timeout=900)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return done.returncode
        totals = dump_totals(out)
        print(f"Instructions per call, thousands ({backend}; (total(5N) - total(N)) / 4N, N = {N})")
        for i, name in enumerate(names):
            short, long = totals[3 * i + 1], totals[3 * i + 2]
            print(f"  {name:20} {(long - short) / (4 * N) / 1000:8.1f}k")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


def _all_names() -> list[str]:
    return [
        "request:untouched", "request:read", "request:write", "request:new", "request:renew",
        "open_session", "tokens.check", "token_for", "storage_key", "backend.load",
        "decode", "store.open", "changes:read", "changes:write", "backend.update",
        "session:read", "session:write",
    ]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
