"""Faults under a real multi-process server: gunicorn workers, many writers.

Each run serves ``tests/support/fault_app.py`` with gunicorn, gives every
writer thread its own session, and has it write increasing numbers to its own
key while the store crashes and comes back (or a worker is killed). Then no
request may have answered 500, every acknowledged write must still be there,
and the service must come back by itself.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import os
import re
import secrets
import signal
import threading
import time
import typing as t
from collections import Counter
from pathlib import Path

import pytest

from flask_serversession import ServerSession

from .support.fault_app import create_app
from .support.fault_app import ENV_PREFIX
from .support.gunicorn import Gunicorn
from .support.gunicorn import HOST
from .support.postgres import PostgresServer
from .support.redis_servers import RedisServer

APP = "tests.support.fault_app:create_app()"
WRITERS = 6
#: Safety bound of requests per writer; the time bounds end a run long before.
MAX_REQUESTS = 2000
#: Pause between two requests of one writer.
PAUSE = 0.004
#: Acknowledged writes to see before the fault is injected.
WARMUP_ACKS = 36
#: How long the store stays down.
OUTAGE = 1.0
#: Every writer must have a write acknowledged this soon after the store is back.
RECOVERY_LIMIT = 15.0
#: Acknowledged writes each writer needs after recovery before the run ends.
ACKS_AFTER = 5
REQUEST_TIMEOUT = 10.0


@dataclasses.dataclass
class Reply:
    status: int
    body: bytes
    cookie: str | None


def call(port: int, method: str, path: str, cookie: str | None = None) -> Reply:
    """One request on a new connection; returns the status, body and new cookie."""
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request(method, path, headers={"Cookie": f"session={cookie}"} if cookie else {})
        response = conn.getresponse()
        body = response.read()
        new = None
        for header in response.headers.get_all("Set-Cookie") or ():
            name, _, rest = header.partition("=")
            if name.strip() == "session":
                new = rest.partition(";")[0]
        return Reply(response.status, body, new)
    finally:
        conn.close()


@dataclasses.dataclass
class Attempt:
    started: float
    ended: float
    #: HTTP status, or 0 when the connection failed or dropped.
    status: int
    cookie_set: bool


class Gate:
    """Lets the writers' requests through, or holds them all back."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = True
        self._stopped = False
        self._busy = 0

    def enter(self, deadline: float) -> bool:
        """Wait until open; False once stopped or past ``deadline``."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._open or self._stopped, max(0.0, deadline - time.monotonic())
            )
            if self._stopped or not self._open or time.monotonic() > deadline:
                return False
            self._busy += 1
            return True

    def leave(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def hold(self) -> None:
        """Close, and wait until no request is in flight."""
        with self._cond:
            self._open = False
            if not self._cond.wait_for(lambda: self._busy == 0, REQUEST_TIMEOUT + 5):
                raise TimeoutError("requests still in flight")

    def release(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()


@dataclasses.dataclass
class Writer:
    """A client with its own session, writing 1, 2, 3... to its own key."""

    key: str
    cookie: str
    acked: int = 0
    attempts: list[Attempt] = dataclasses.field(default_factory=list)

    def run(self, port: int, gate: Gate, deadline: float) -> None:
        for value in range(1, MAX_REQUESTS + 1):
            if not gate.enter(deadline):
                return
            started = time.monotonic()
            try:
                reply = call(port, "POST", f"/write?key={self.key}&value={value}", self.cookie)
            except (OSError, http.client.HTTPException):
                self.attempts.append(Attempt(started, time.monotonic(), 0, False))
            else:
                ended = time.monotonic()
                self.attempts.append(
                    Attempt(started, ended, reply.status, reply.cookie is not None)
                )
                if reply.status // 100 == 2:
                    self.acked = value
            finally:
                gate.leave()
            time.sleep(PAUSE)

    def acks_since(self, moment: float) -> int:
        return sum(1 for a in list(self.attempts) if a.started >= moment and a.status // 100 == 2)


@dataclasses.dataclass(repr=False)
class Figures:
    requests: int = 0
    ok: int = 0
    unavailable: int = 0
    server_errors: int = 0
    other: int = 0
    dropped: int = 0
    cookie_on_503: int = 0
    cookie_on_write: int = 0
    unavailable_after_recovery: int = 0
    lost_acknowledged: int = 0
    recovery_ms: float | None = None
    #: Errors the workers logged after recovery: (worker pid, message).
    logged_after_recovery: list[tuple[int, str]] = dataclasses.field(default_factory=list)

    def line(self, name: str) -> str:
        recovery = "never" if self.recovery_ms is None else f"{self.recovery_ms:.0f} ms"
        text = (
            f"{name}: requests={self.requests} 2xx={self.ok} 503={self.unavailable}"
            f" 500={self.server_errors} other={self.other} dropped={self.dropped}"
            f" 503-after-recovery={self.unavailable_after_recovery}"
            f" cookie-on-503={self.cookie_on_503} lost-acknowledged={self.lost_acknowledged}"
            f" recovery={recovery}"
        )
        pids = Counter(pid for pid, _ in self.logged_after_recovery)
        if pids:
            text += f"\n  logged after recovery, per worker pid: {dict(pids)}"
        for message in sorted({m for _, m in self.logged_after_recovery})[:3]:
            text += f"\n  {message[:400]}"
        return text

    def __repr__(self) -> str:
        return self.line(type(self).__name__)


def app_env(secret: str, **config: str) -> dict[str, str]:
    return {f"{ENV_PREFIX}_{k}": v for k, v in {"SECRET_KEY": secret, **config}.items()}


def new_writers(port: int) -> list[Writer]:
    """One session per writer, created by its first write."""
    writers = []
    for n in range(WRITERS):
        key = f"w{n}"
        reply = call(port, "POST", f"/write?key={key}&value=0")
        assert reply.status == 200, reply
        assert reply.cookie, "the first write sets the session cookie"
        writers.append(Writer(key, reply.cookie))
    return writers


@dataclasses.dataclass
class Run:
    writers: list[Writer]
    #: When the store was back (``time.monotonic()`` and ``time.time()``).
    back: float
    back_wall: float

    def first_ack_after_back(self) -> float | None:
        ends = [
            a.ended
            for w in self.writers
            for a in w.attempts
            if a.started >= self.back and a.status // 100 == 2
        ]
        return min(ends, default=None)


def run_with_fault(server: Gunicorn, fault: t.Callable[[], None], *, quiet: bool = False) -> Run:
    """Let every writer write while ``fault`` runs; it returns once the store
    is back. When ``quiet``, no request is made while it runs. Ends once each
    writer has :data:`ACKS_AFTER` acknowledged writes started after that, or
    :data:`RECOVERY_LIMIT` passed.
    """
    writers = new_writers(server.port)
    gate = Gate()
    deadline = time.monotonic() + 60
    threads = [
        threading.Thread(target=w.run, args=(server.port, gate, deadline), daemon=True)
        for w in writers
    ]
    for thread in threads:
        thread.start()
    try:
        warm = time.monotonic() + 10
        while sum(w.acks_since(0) for w in writers) < WARMUP_ACKS and time.monotonic() < warm:
            time.sleep(0.01)
        if quiet:
            gate.hold()
        fault()
        run = Run(writers, time.monotonic(), time.time())
        gate.release()
        limit = run.back + RECOVERY_LIMIT
        while time.monotonic() < limit and any(
            w.acks_since(run.back) < ACKS_AFTER for w in writers
        ):
            time.sleep(0.02)
    finally:
        gate.stop()
        for thread in threads:
            thread.join(REQUEST_TIMEOUT + 5)
    return run


_LOG_LINE = re.compile(r"^(\d+\.\d+) \[(\d+)\] ERROR (\S+): (.*)$", re.MULTILINE)


def measure(server: Gunicorn, run: Run) -> tuple[Figures, list[str]]:
    """Count the outcomes, then read every session back over HTTP."""
    figures = Figures()
    statuses: Counter[int] = Counter()
    for writer in run.writers:
        for a in writer.attempts:
            statuses[a.status] += 1
            figures.cookie_on_503 += a.status == 503 and a.cookie_set
            figures.cookie_on_write += a.status != 503 and a.cookie_set
            figures.unavailable_after_recovery += a.status == 503 and a.started >= run.back
    figures.requests = sum(statuses.values())
    figures.ok = sum(n for s, n in statuses.items() if s // 100 == 2)
    figures.unavailable = statuses[503]
    figures.server_errors = statuses[500]
    figures.dropped = statuses[0]
    figures.other = figures.requests - figures.ok - figures.unavailable
    figures.other -= figures.server_errors + figures.dropped
    first_ok = run.first_ack_after_back()
    if first_ok is not None:
        figures.recovery_ms = (first_ok - run.back) * 1000
    figures.logged_after_recovery = [
        (int(pid), f"{name}: {message}")
        for created, pid, name, message in _LOG_LINE.findall(server.log_file.read_text())
        if float(created) >= run.back_wall
    ]
    problems = []
    for writer in run.writers:
        reply = call(server.port, "GET", "/read", writer.cookie)
        if reply.status != 200 or reply.cookie is not None:
            figures.lost_acknowledged += writer.acked
            problems.append(f"{writer.key}: read answered {reply.status}, cookie {reply.cookie}")
            continue
        stored = json.loads(reply.body).get(writer.key, -1)
        if stored < writer.acked:
            figures.lost_acknowledged += writer.acked - stored
            problems.append(f"{writer.key}: stored {stored} < acknowledged {writer.acked}")
    return figures, problems


def report(request: pytest.FixtureRequest, name: str, figures: Figures) -> None:
    print(f"\n{figures.line(name)}")
    request.node.user_properties.append(("figures", figures.line(name)))
    for field, value in dataclasses.asdict(figures).items():
        count = field == "logged_after_recovery"
        request.node.user_properties.append((field, len(value) if count else value))


def check_store_fault(figures: Figures, problems: list[str], run: Run, *, quiet: bool) -> None:
    """What must hold after the store went down and came back."""
    assert figures.server_errors == 0, figures
    assert figures.other == 0, figures
    assert figures.dropped == 0, figures
    assert figures.cookie_on_503 == 0, figures
    assert figures.cookie_on_write == 0, figures
    if not quiet:
        assert figures.unavailable > 0, "the fault was injected while the writers ran"
    assert problems == [], problems
    assert figures.lost_acknowledged == 0, figures
    assert figures.recovery_ms is not None, "no write succeeded after the store came back"
    assert figures.recovery_ms < RECOVERY_LIMIT * 1000
    assert [w.acks_since(run.back) >= ACKS_AFTER for w in run.writers] == [True] * WRITERS
    # Also after a quiet outage: a pooled connection that died with the
    # server must not fail the first request of each worker.
    assert figures.unavailable_after_recovery == 0, figures


def serve(tmp_path: Path, env: dict[str, str]) -> Gunicorn:
    return Gunicorn(APP, env=env, log_file=tmp_path / "gunicorn.log", workers=3, threads=2)


@pytest.mark.parametrize("traffic", ["busy", "idle"])
def test_redis_killed_and_restarted(
    traffic: str,
    tmp_path: Path,
    make_redis_server: t.Callable[..., RedisServer],
    request: pytest.FixtureRequest,
) -> None:
    redis_server = make_redis_server("--appendonly", "yes", "--appendfsync", "always")
    env = app_env(
        secrets.token_hex(16),
        SERVERSESSION_BACKEND="redis",
        SERVERSESSION_REDIS_URL=redis_server.url,
    )

    def fault() -> None:
        redis_server.kill()
        time.sleep(OUTAGE)
        redis_server.start()  # same port and directory: the append-only file is replayed

    with serve(tmp_path, env) as server:
        run = run_with_fault(server, fault, quiet=traffic == "idle")
        figures, problems = measure(server, run)
    report(request, f"redis kill -9, {traffic}", figures)
    check_store_fault(figures, problems, run, quiet=traffic == "idle")


@pytest.fixture(scope="module")
def durable_postgres() -> t.Iterator[PostgresServer]:
    """A private server, durable so that an acknowledged commit survives a crash."""
    with PostgresServer(durable=True) as server:
        yield server


@pytest.mark.parametrize("traffic", ["busy", "idle"])
def test_postgres_crashed_and_restarted(
    traffic: str, tmp_path: Path, durable_postgres: PostgresServer, request: pytest.FixtureRequest
) -> None:
    postgres = durable_postgres
    if not postgres.running:
        postgres.start()
    env = app_env(
        secrets.token_hex(16),
        SERVERSESSION_BACKEND="sqlalchemy",
        SERVERSESSION_SQLALCHEMY_URI=postgres.url + "?connect_timeout=3",
        SERVERSESSION_SQLALCHEMY_TABLE=f"faults_{traffic}",
    )

    def fault() -> None:
        postgres.stop("immediate")
        time.sleep(OUTAGE)
        postgres.start()

    with serve(tmp_path, env) as server:
        run = run_with_fault(server, fault, quiet=traffic == "idle")
        figures, problems = measure(server, run)
    report(request, f"postgres stop -m immediate, {traffic}", figures)
    check_store_fault(figures, problems, run, quiet=traffic == "idle")


@pytest.mark.parametrize("backend", ["sqlite", "filesystem"])
def test_worker_killed(
    backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if backend == "sqlite":
        config = {
            "SERVERSESSION_BACKEND": "sqlalchemy",
            "SERVERSESSION_SQLALCHEMY_URI": f"sqlite:///{tmp_path / 'sessions.sqlite'}",
        }
    else:
        config = {
            "SERVERSESSION_BACKEND": "filesystem",
            "SERVERSESSION_FILE_DIR": str(tmp_path / "sessions"),
        }
    secret = secrets.token_hex(16)
    killed: list[int] = []

    with serve(tmp_path, app_env(secret, **config)) as server:

        def fault() -> None:
            workers = server.worker_pids()
            assert len(workers) == server.workers
            killed.append(workers[0])
            os.kill(workers[0], signal.SIGKILL)
            # Gunicorn replaces it; requests meanwhile go to the other workers.
            limit = time.monotonic() + 10
            while time.monotonic() < limit:
                now = server.worker_pids()
                if len(now) == server.workers and workers[0] not in now:
                    return
                time.sleep(0.01)

        run = run_with_fault(server, fault)
        figures, problems = measure(server, run)
        workers_after = server.worker_pids()
        log = server.log_file.read_text(errors="replace")
    report(request, f"{backend}, worker kill -9", figures)

    assert len(workers_after) == server.workers
    assert killed[0] not in workers_after
    assert figures.server_errors == figures.other == figures.unavailable == 0, figures
    # Only the requests the killed worker had accepted can be dropped.
    assert figures.dropped <= WRITERS, figures
    assert figures.cookie_on_write == 0, figures
    assert problems == [], problems
    assert figures.lost_acknowledged == 0, figures
    assert figures.recovery_ms is not None
    assert " ERROR " not in log

    # Every stored session still decodes, and no writer lost its session.
    app = create_app(SECRET_KEY=secret, **config)
    try:
        with caplog.at_level(logging.ERROR, logger="flask_serversession"), app.app_context():
            stored = dict(ServerSession().items())
    finally:
        app.extensions["serversession"].backend.close()
    assert len(stored) == WRITERS
    assert sorted(k for data in stored.values() for k in data) == sorted(w.key for w in run.writers)
    assert caplog.records == []
