"""What one rotation costs: round trips, CPU instructions and stored bytes, counted.

Usage: python benchmarks/rotation_cost.py BACKEND LOCATION [--instructions]

BACKEND is ``redis`` (LOCATION: a loopback URL such as ``redis://127.0.0.1:6379/0``)
or ``sqlite`` (LOCATION: an empty directory). A session is signed in, then each
round moves the store's clock past ``SERVERSESSION_ROTATE_EVERY`` and sends the
request that rotates (``rotate``) and the next one, which brings the new token
(``first use``); a plain read of a session that does not rotate is counted as
the floor. It prints the round trips of each (Redis commands sent, or SQL
statements), the stored bytes of the session (every stored key and value) and
the token's length. With ``--instructions`` it runs itself under ``valgrind
--tool=callgrind`` and prints the instructions of one rotating round (the
rotating request and the first use of its token) and, counted first, of one
round of two plain reads, each ``(total(5N) - total(N)) / 4N``. It uses only
the public API and the store's ``clock``, so it measures any version of the
package on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

from flask import Flask
from flask import session
from instructions import dump_totals
from steps import counted

ROUNDS = 20
N = 20
_CHILD = "BENCH_ROTATION_CHILD"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def build(backend: str, location: str) -> tuple[Flask, Clock]:
    app = Flask("rotation_cost")
    app.config.update(SECRET_KEY="benchmark secret key " * 2)
    app.config["SERVERSESSION_ROTATE_EVERY"] = timedelta(hours=1)
    if backend == "redis":
        app.config.update(SERVERSESSION_BACKEND="redis", SERVERSESSION_REDIS_URL=location)
    else:
        uri = f"sqlite:///{os.path.join(location, 'sessions.sqlite')}"
        app.config.update(SERVERSESSION_BACKEND="sqlalchemy", SERVERSESSION_SQLALCHEMY_URI=uri)
    from flask_serversession import ServerSession

    ServerSession(app)
    clock = Clock()
    app.extensions["serversession"].clock = clock

    @app.post("/sign-in")
    def sign_in() -> str:
        session["user"] = "alice"
        session["cart"] = ["tea", "scones"]
        return "signed in"

    @app.get("/read")
    def read() -> str:
        return str(session.get("user"))

    return app, clock


class Browser:
    """A client whose cookie follows every response."""

    def __init__(self, app: Flask) -> None:
        self.client = app.test_client()
        self.client.post("/sign-in")

    @property
    def token(self) -> str:
        cookie = self.client.get_cookie("session")
        assert cookie is not None
        return cookie.value

    def read(self) -> None:
        assert self.client.get("/read").status_code == 200


def round_trips(backend: str, app: Flask) -> t.Callable[[], int]:
    """A counter of round trips: Redis commands sent, or SQL statements run."""
    sent = [0]
    if backend == "redis":
        import redis.connection

        base = redis.connection.AbstractConnection
        original = base.send_packed_command

        def send(self: t.Any, *args: t.Any, **kwargs: t.Any) -> None:
            sent[0] += 1
            original(self, *args, **kwargs)

        base.send_packed_command = send  # type: ignore[method-assign]
    else:
        import sqlalchemy as sa

        engine = app.extensions["serversession"].backend.engine

        @sa.event.listens_for(engine, "before_cursor_execute")
        def statement(*args: t.Any) -> None:
            sent[0] += 1

    return lambda: sent[0]


def stored_bytes(app: Flask, token: str) -> int:
    from flask_serversession.backends.base import data_size

    store = app.extensions["serversession"]
    with app.app_context():
        key = store.storage_key(store.sid_from(token))
        record = store.backend.load(key)
    assert record is not None
    return data_size(record.data)


def count(backend: str, location: str) -> None:
    app, clock = build(backend, location)
    browser = Browser(app)
    browser.read()
    before = stored_bytes(app, browser.token)
    counter = round_trips(backend, app)
    start = counter()
    browser.read()
    floor = counter() - start
    rotate = first_use = 0
    for _ in range(ROUNDS):
        clock.now += timedelta(minutes=61)
        start = counter()
        browser.read()
        rotate += counter() - start
        start = counter()
        browser.read()
        first_use += counter() - start
    unit = "Redis commands" if backend == "redis" else "SQL statements"
    print(f"{backend}: {unit} per request, mean of {ROUNDS} rotations")
    print(f"  read, no rotation due   {floor}")
    print(f"  rotate                  {rotate / ROUNDS:g}")
    print(f"  first use of new token  {first_use / ROUNDS:g}")
    print(f"stored bytes: {before} before any rotation, {stored_bytes(app, browser.token)} after")
    print(f"token length: {len(browser.token)} characters")


def child(backend: str, location: str) -> None:
    app, clock = build(backend, location)
    browser = Browser(app)
    browser.read()

    def rotation() -> None:
        clock.now += timedelta(minutes=61)
        browser.read()
        browser.read()

    def plain() -> None:
        browser.read()
        browser.read()

    for step in (plain, rotation):
        counted(step, N)


def instructions(backend: str, location: str) -> int:
    if shutil.which("valgrind") is None:
        print("valgrind is not installed", file=sys.stderr)
        return 2
    directory = tempfile.mkdtemp(prefix="serversession-rotation-")
    try:
        out = os.path.join(directory, "callgrind.out")
        argv = [
            "valgrind", "--tool=callgrind", "--dump-before=getppid",
            f"--callgrind-out-file={out}", sys.executable, os.path.abspath(__file__),
            backend, location,
        ]  # fmt: skip
        env = dict(os.environ, PYTHONHASHSEED="0", **{_CHILD: "1"})
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return done.returncode
        totals = dump_totals(out)
        per = [(totals[3 * i + 2] - totals[3 * i + 1]) / (4 * N) / 1000 for i in range(2)]
        print(
            f"{backend}: instructions per round, thousands ((total(5N) - total(N)) / 4N, N = {N})"
        )
        print(f"  two plain reads                             {per[0]:8.1f}k")
        print(f"  rotating request + first use of its token  {per[1]:8.1f}k")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("redis", "sqlite"):
        print(__doc__, file=sys.stderr)
        return 2
    backend, location = argv[0], argv[1]
    if os.environ.get(_CHILD) == "1":
        child(backend, location)
        return 0
    if "--instructions" in argv[2:]:
        return instructions(backend, location)
    count(backend, location)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
