"""Throughput, latency and lost updates under a real multi-process server (gunicorn)."""

from __future__ import annotations

import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
import typing as t
from dataclasses import dataclass

from apps import build_app
from apps import close_app
from apps import COOKIE_NAME
from apps import seed_session
from apps import session_cookie
from apps import Spec
from lineup import lineup
from lineup import note
from lineup import Places
from servers import end_process
from servers import free_port
from servers import HOST
from servers import wait_for_port
from stats import load as current_load
from stats import ms
from stats import percentile
from stats import table
from stats import wait_for_quiet
from targets import Scoreboard

#: Share of requests that increment a counter; the rest read one key.
MIXES = {"read-heavy": 0.1, "write-heavy": 0.9}
WORKERS = 4
#: Backends whose throughput is held to at least Flask-Session's.
THROUGHPUT_TARGETS = frozenset({"redis"})
THREADS_PER_WORKER = 4
CLIENTS = 8
#: Clients per session: they change different keys of one session at once.
CLIENTS_PER_SESSION = 2
TIMEOUT = 10.0
#: A store that lives in one process cannot serve several workers.
SINGLE_PROCESS = ("memory",)


@dataclass(frozen=True)
class Load:
    requests: int
    cap_seconds: float


class Server:
    """One contender's app under gunicorn (gthread workers, keep-alive), on loopback."""

    def __init__(self, spec: Spec) -> None:
        self.port = free_port()
        here = os.path.dirname(os.path.abspath(__file__))
        argv = [
            sys.executable, "-m", "gunicorn",
            "--chdir", here,
            "--bind", f"{HOST}:{self.port}",
            "--workers", str(WORKERS),
            "--worker-class", "gthread",
            "--threads", str(THREADS_PER_WORKER),
            "--keep-alive", "30",
            "--timeout", "60",
            "--log-level", "warning",
            "serve:application",
        ]  # fmt: skip
        env = {**os.environ, "BENCH_SPEC": spec.to_json()}
        self.process = subprocess.Popen(argv, env=env, start_new_session=True)
        try:
            wait_for_port(self.port)
            self._wait_for_workers()
        except Exception:
            self.stop()
            raise

    def _wait_for_workers(self) -> None:
        """Return once a request is answered: a worker has built the app."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            conn = http.client.HTTPConnection(HOST, self.port, timeout=TIMEOUT)
            try:
                if get(conn, "/untouched", None)[0] == 200:
                    time.sleep(0.5)  # the other workers boot at the same moment
                    return
            except (OSError, http.client.HTTPException):
                time.sleep(0.2)
            finally:
                conn.close()
        raise RuntimeError("gunicorn answered no request within 60 s")

    def stop(self) -> None:
        end_process(self.process)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def prepare_store(spec: Spec) -> None:
    """Create the contender's tables once, before workers race to create them."""
    app = build_app(spec)
    try:
        seed_session(app)
    finally:
        close_app(app)


def get(
    conn: http.client.HTTPConnection, path: str, cookie: str | None
) -> tuple[int, str | None, bytes]:
    headers = {"Cookie": f"{COOKIE_NAME}={cookie}"} if cookie else {}
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = response.read()
    return response.status, session_cookie(response.getheaders()), body


class Client(threading.Thread):
    """Sends a fixed number of requests (or stops at the deadline) on one keep-alive connection."""

    def __init__(self, index: int, port: int, cookie: str, write_share: float, load: Load) -> None:
        super().__init__(name=f"bench-client-{index}", daemon=True)
        self.index, self.port, self.cookie = index, port, cookie
        self.write_share, self.load = write_share, load
        self.latencies: list[float] = []
        self.increments = 0
        self.errors = 0
        self.go = threading.Event()
        self.deadline = 0.0

    def run(self) -> None:
        rng = random.Random(self.index)
        conn = http.client.HTTPConnection(HOST, self.port, timeout=TIMEOUT)
        self.go.wait()
        clock = time.perf_counter
        for _ in range(self.load.requests):
            if time.monotonic() > self.deadline:
                break
            write = rng.random() < self.write_share
            path = f"/incr/{self.index}" if write else "/read"
            start = clock()
            try:
                status, cookie, _ = get(conn, path, self.cookie)
            except (OSError, http.client.HTTPException):
                self.errors += 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, self.port, timeout=TIMEOUT)
                continue
            self.latencies.append(clock() - start)
            if status != 200:
                self.errors += 1
                continue
            self.increments += write
            if cookie:
                self.cookie = cookie
        conn.close()


@dataclass(frozen=True)
class Outcome:
    spec: Spec
    mix: str
    requests: int
    seconds: float
    latencies: list[float]
    errors: int
    lost: int | None


def seed_sessions(port: int, count: int) -> list[str]:
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    try:
        cookies = []
        for _ in range(count):
            status, cookie, _ = get(conn, "/seed", None)
            if status != 200 or cookie is None:
                raise RuntimeError(f"seeding a session answered {status}")
            cookies.append(cookie)
        for cookie in cookies:  # warm the server's threads and connections
            get(conn, "/read", cookie)
        return cookies
    finally:
        conn.close()


def lost_updates(port: int, clients: t.Sequence[Client]) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    try:
        lost = 0
        for client in clients:
            status, _, body = get(conn, "/dump", client.cookie)
            stored = json.loads(body).get(f"c{client.index}", 0) if status == 200 else 0
            lost += client.increments - stored
        return lost
    finally:
        conn.close()


def drive(spec: Spec, port: int, mix: str, load: Load) -> Outcome:
    shared = 1 if spec.family == "cookie" else CLIENTS_PER_SESSION
    cookies = seed_sessions(port, CLIENTS // shared)
    clients = [Client(i, port, cookies[i // shared], MIXES[mix], load) for i in range(CLIENTS)]
    for client in clients:
        client.start()
    start = time.perf_counter()
    deadline = time.monotonic() + load.cap_seconds
    for client in clients:
        client.deadline = deadline
        client.go.set()
    for client in clients:
        client.join(load.cap_seconds + 2 * TIMEOUT)
    seconds = time.perf_counter() - start
    latencies = [x for c in clients for x in c.latencies]
    errors = sum(c.errors for c in clients)
    return Outcome(
        spec, mix, len(latencies), seconds, latencies, errors, lost_updates(port, clients)
    )


def render(outcomes: t.Sequence[Outcome], load: str) -> str:
    rate = {(o.spec.family, o.spec.backend, o.mix): o.requests / o.seconds for o in outcomes}
    rows = []
    for o in outcomes:
        theirs = rate.get(("fs", o.spec.backend, o.mix)) if o.spec.family == "fss" else None
        rows.append(
            (
                o.spec.name,
                o.mix,
                f"{o.requests / o.seconds:,.0f}",
                f"{o.requests / o.seconds / theirs:.2f}x" if theirs else "-",
                ms(percentile(o.latencies, 0.5)),
                ms(percentile(o.latencies, 0.99)),
                str(o.errors),
                "-" if o.lost is None else str(o.lost),
            )
        )
    headers = (
        "contender", "mix", "req/s", "vs Flask-Session", "p50 ms", "p99 ms", "errors",
        "lost updates",
    )  # fmt: skip
    title = (
        f"Throughput: gunicorn, {WORKERS} gthread workers x {THREADS_PER_WORKER} threads;"
        f" {CLIENTS} keep-alive clients, {CLIENTS_PER_SESSION} per session (cookie: 1);"
        f" read-heavy 10% writes, write-heavy 90%; {load}"
    )
    return table(title, headers, rows)


def run(
    places: Places,
    backends: t.Sequence[str],
    board: Scoreboard,
    *,
    quick: bool = False,
    requests: int | None = None,
) -> None:
    load = Load(requests or (60 if quick else 300), 8.0 if quick else 25.0)
    outcomes = []
    before = current_load()
    for spec in lineup(places, "conc", backends=backends):
        if spec.backend in SINGLE_PROCESS:
            note(f"{spec.name} is skipped under gunicorn: its store lives in one process.")
            continue
        wait_for_quiet(f"throughput {spec.name}")
        try:
            if spec.family != "cookie":
                prepare_store(spec)
            with Server(spec) as server:
                for mix in MIXES:
                    outcomes.append(drive(spec, server.port, mix, load))
        except Exception as e:  # report, and go on with the other contenders
            note(f"{spec.name} failed under load: {type(e).__name__}: {e}")
    if not outcomes:
        return
    print(render(outcomes, f"{before}, after: {current_load()}"), flush=True)
    rate = {(o.spec.family, o.spec.backend, o.mix): o.requests / o.seconds for o in outcomes}
    for o in outcomes:
        if o.spec.family == "fss":
            subject = f"{o.mix}: {o.spec.backend}"
            board.exactly("no lost updates", subject, o.lost or 0, 0)
            theirs = rate.get(("fs", o.spec.backend, o.mix))
            if o.spec.backend in THROUGHPUT_TARGETS and theirs:
                ours = o.requests / o.seconds
                board.at_least("throughput ours/Flask-Session", subject, ours / theirs, 1.0, "x")
            if o.errors:
                board.exactly("no errors under load", subject, o.errors, 0)
