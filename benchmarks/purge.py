"""Time to purge expired sessions, and how long a concurrent save waits meanwhile."""

from __future__ import annotations

import threading
import time
import typing as t
from dataclasses import dataclass

import bulk
from apps import build_app
from apps import call
from apps import close_app
from apps import make_environ
from apps import seed_session
from apps import Spec
from flask import Flask
from lineup import available
from lineup import note
from lineup import Places
from stats import load
from stats import ms
from stats import percentile
from stats import stopwatch
from stats import table
from stats import wait_for_quiet
from targets import Scoreboard

COUNTS = (100_000, 1_000_000)
FILESYSTEM_MAX = 100_000
BASELINE_SECONDS = 2.0
WRITER_CAP_SECONDS = 300.0
WRITER_CAP_WRITES = 200_000
#: Purge time limits for 1,000,000 expired rows.
PURGE_LIMIT_SECONDS = {"sqlite": 5.0, "postgres": 2.0}
PURGE_LIMIT_ROWS = 1_000_000
WAIT_LIMIT_SECONDS = 0.1


class Writer(threading.Thread):
    """Saves the session in a loop, recording each request's latency; bounded."""

    def __init__(self, app: Flask, cookie: str) -> None:
        super().__init__(name="bench-writer", daemon=True)
        self.app = app
        self.environ = make_environ("/write", cookie)
        self.latencies: list[float] = []
        self.failures = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + WRITER_CAP_SECONDS
        clock = time.perf_counter
        while not self.stopping.is_set() and len(self.latencies) < WRITER_CAP_WRITES:
            if time.monotonic() > deadline:
                break
            start = clock()
            status, _, _ = call(self.app, self.environ)
            self.latencies.append(clock() - start)
            self.failures += not status.startswith("200")

    def take(self) -> list[float]:
        """Return the latencies so far and start a new list."""
        taken, self.latencies = self.latencies, []
        return taken


@dataclass(frozen=True)
class Outcome:
    backend: str
    expired: int
    removed: int
    seconds: float
    baseline: list[float]
    during: list[float]
    failures: int
    #: Seconds for the bare driver to delete as many rows in one transaction.
    floor: float | None = None


def purge_once(spec: Spec, count: int) -> Outcome:
    app = build_app(spec)
    try:
        cookie = seed_session(app)
        elapsed = stopwatch()
        bulk.fill(app, spec, count, expired=True)
        print(f"  loaded {count:,} expired sessions into {spec.backend} in {elapsed():.1f} s")
        writer = Writer(app, cookie)
        writer.start()
        time.sleep(BASELINE_SECONDS)
        baseline = writer.take()
        elapsed = stopwatch()
        removed = app.extensions["serversession"].purge_expired()
        seconds = elapsed()
        during = writer.take()
        writer.stopping.set()
        writer.join()
    finally:
        close_app(app)
    floor = one_transaction_floor(spec, count) if spec.backend != "filesystem" else None
    return Outcome(spec.backend, count, removed, seconds, baseline, during, writer.failures, floor)


def one_transaction_floor(spec: Spec, count: int) -> float:
    """Refill the store with ``count`` expired rows; time the bare driver deleting them at once."""
    app = build_app(spec)
    try:
        bulk.fill(app, spec, count, expired=True)
    finally:
        close_app(app)
    removed, seconds = bulk.delete_expired_at_once(spec)
    if removed != count:
        raise RuntimeError(f"the floor's delete removed {removed:,} rows, not {count:,}")
    return seconds


def plan(
    places: Places, backends: t.Sequence[str], counts: t.Sequence[int]
) -> list[tuple[Spec, int]]:
    runs = []
    for backend in [b for b in ("sqlite", "postgres", "filesystem") if b in backends]:
        reason = available(places, "fss", backend)
        if reason is not None:
            note(f"ServerSession {backend} is skipped: {reason}.")
            continue
        for count in counts:
            if backend == "filesystem" and count > FILESYSTEM_MAX:
                continue
            runs.append((places.spec("fss", backend, f"purge{count}"), count))
    return runs


def render(outcomes: t.Sequence[Outcome], load_note: str) -> str:
    rows = []
    for o in outcomes:
        rows.append(
            (
                o.backend,
                f"{o.expired:,}",
                f"{o.removed:,}",
                f"{o.seconds:.2f}",
                f"{o.expired / o.seconds:,.0f}" if o.seconds else "-",
                "-" if o.floor is None else f"{o.floor:.2f}",
                str(len(o.during)),
                ms(max(o.baseline, default=float("nan"))),
                ms(percentile(o.during, 0.99)),
                ms(max(o.during, default=float("nan"))),
            )
        )
    headers = (
        "backend", "expired", "removed", "purge s", "rows/s", "one-transaction floor s",
        "writes during",
        "max write ms before", "p99 write ms during", "max write ms during",
    )  # fmt: skip
    title = (
        "Purge: removing expired sessions while a thread keeps saving a live session"
        " (floor: the bare driver deleting as many rows in one transaction, no save meanwhile)"
    )
    title = f"{title}; {load_note}"
    return table(title, headers, rows)


def score(outcomes: t.Sequence[Outcome], board: Scoreboard) -> None:
    for o in outcomes:
        subject = f"{o.backend} {o.expired:,}"
        board.exactly("purge removes all expired", subject, o.removed, o.expired)
        if o.failures:
            board.exactly("no failed save during purge", subject, o.failures, 0)
        limit = PURGE_LIMIT_SECONDS.get(o.backend)
        if limit is not None and o.expired >= PURGE_LIMIT_ROWS:
            board.at_most("purge time", subject, o.seconds, limit, "s")
        worst = max(o.during, default=0.0) * 1000
        board.at_most("write wait during purge", subject, worst, WAIT_LIMIT_SECONDS * 1000, "ms")


def run(
    places: Places,
    backends: t.Sequence[str],
    board: Scoreboard,
    *,
    counts: t.Sequence[int] | None = None,
) -> None:
    counts = sorted(counts or COUNTS)
    outcomes = []
    before = load()
    for spec, count in plan(places, backends, counts):
        wait_for_quiet(f"purge {spec.backend} {count:,}")
        try:
            outcomes.append(purge_once(spec, count))
        except Exception as e:  # report, and go on with the other backends
            note(f"purging {count:,} on {spec.backend} failed: {type(e).__name__}: {e}")
    if outcomes:
        print(render(outcomes, f"{before}, after: {load()}"), flush=True)
        score(outcomes, board)
