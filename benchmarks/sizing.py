"""What a large store costs: bytes per session, latency with 10% expired, and a purge.

Runs on the largest store of the scale section (the same records, already
loaded). For each backend: bytes per stored session for the seed session
(about 300 bytes of data) and, in a store of its own, for a 2 KB session;
read and write latency after expired records are added until they are 10% of
the store; then ``purge_expired()`` while a thread keeps saving a live
session, with the write-ahead log it wrote and the dead tuples it left on
PostgreSQL; there, then the ``VACUUM (ANALYZE)`` that a purge of that size
runs, timed on its own while the thread keeps saving, and the dead tuples
left after it.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
import typing as t
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import bulk
from apps import build_app
from apps import call
from apps import close_app
from apps import make_environ
from apps import SEED
from apps import Spec
from flask import Flask
from flask.sessions import session_json_serializer
from lineup import note
from lineup import Places
from purge import BASELINE_SECONDS
from purge import WAIT_LIMIT_SECONDS
from purge import Writer
from stats import ms
from stats import percentile
from stats import stopwatch
from stats import table
from targets import Scoreboard

from flask_serversession.backends.base import Record

#: Share of the store that is expired while latency is measured and purged.
EXPIRED_SHARE = 0.10
#: Requests per latency figure, and the seconds they may take at most.
LATENCY_REQUESTS = 2_000
LATENCY_SECONDS = 15.0
#: Size of the large session's data, and the most copies of it stored.
LARGE_BYTES = 2_048
LARGE_MAX = 200_000
#: Redis keys sampled with MEMORY USAGE.
SAMPLE_KEYS = 200
#: Redis must leave this much memory free for the rest of the machine.
REDIS_KEEP_FREE = 8 << 30
#: Redis bytes per small session assumed before anything is measured (with margin).
REDIS_GUESS_BYTES = 1_200
REDIS_LARGE_DB = 30
#: An idle PostgreSQL backend sends its table statistics within 10 s.
STATS_FLUSH_SECONDS = 11.0


@dataclass
class Sizing:
    backend: str
    stored: int
    #: Bytes per session of the seed session, by part ("table", "indexes", "file", "memory").
    small: dict[str, float] = field(default_factory=dict)
    large_count: int = 0
    large: dict[str, float] = field(default_factory=dict)
    expired: int = 0
    read: list[float] = field(default_factory=list)
    write: list[float] = field(default_factory=list)
    removed: int = 0
    purge_seconds: float = float("nan")
    before: list[float] = field(default_factory=list)
    during: list[float] = field(default_factory=list)
    failures: int = 0
    wal_bytes: int | None = None
    dead_after: int | None = None
    vacuum_seconds: float | None = None
    during_vacuum: list[float] = field(default_factory=list)
    autovacuum: str = "-"


def memory_available() -> int:
    """Bytes the kernel reports as available (MemAvailable), or 0 when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def redis_too_big(count: int) -> str | None:
    """Why ``count`` small sessions (and the large store) would not fit in Redis here, or None."""
    need = count * REDIS_GUESS_BYTES + min(count, LARGE_MAX) * (LARGE_BYTES + 1_500)
    free = memory_available()
    if free - need < REDIS_KEEP_FREE:
        return (
            f"{count:,} sessions need about {need / 2**30:.1f} GiB of Redis memory,"
            f" which would leave less than {REDIS_KEEP_FREE >> 30} GiB of the"
            f" {free / 2**30:.1f} GiB available"
        )
    return None


def large_record() -> Record:
    """The seed session plus random text, 2 KB of stored data, live for a day.

    Random text does not compress, so PostgreSQL's TOAST compression cannot
    hide the size: the worst case for a session of that size.
    """
    data = {k: session_json_serializer.dumps(v) for k, v in SEED.items()}
    filler = LARGE_BYTES - sum(len(k) + len(v) for k, v in data.items()) - len("notes") - 2
    data["notes"] = session_json_serializer.dumps(secrets.token_urlsafe(filler)[:filler])
    now = datetime.now(timezone.utc)
    return Record(data, now, now + timedelta(days=1))


def _pg(spec: Spec) -> t.Any:
    import psycopg
    from floors import psycopg_conninfo

    return psycopg.connect(psycopg_conninfo(spec.location), autocommit=True)


def _redis(spec: Spec) -> t.Any:
    import redis

    return redis.Redis.from_url(spec.location)


def footprint(spec: Spec) -> dict[str, int]:
    """Bytes the store of ``spec`` takes now, by part (Redis: the whole server's memory)."""
    if spec.backend == "postgres":
        with _pg(spec) as conn:
            name = bulk.table_of(spec)
            row = conn.execute(
                "SELECT pg_table_size(%s), pg_indexes_size(%s)", (f'"{name}"', f'"{name}"')
            ).fetchone()
            return {"table": int(row[0]), "indexes": int(row[1])}
    if spec.backend == "sqlite":
        path = bulk.sqlite_path(spec)
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:  # pages still in the write-ahead log would be counted twice
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        size = sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))
        return {"file": size}
    client = _redis(spec)
    try:
        return {"memory": int(client.info("memory")["used_memory"])}
    finally:
        client.close()


def redis_sampled(spec: Spec) -> float:
    """Median MEMORY USAGE of up to SAMPLE_KEYS session keys of ``spec``'s prefix."""
    client = _redis(spec)
    try:
        sizes = []
        pattern = bulk.table_of(spec) + "*"
        for name in client.scan_iter(match=pattern, count=1_000):
            usage = client.memory_usage(name, samples=0)
            if usage:
                sizes.append(usage)
            if len(sizes) >= SAMPLE_KEYS:
                break
        return percentile(sizes, 0.5)
    finally:
        client.close()


def redis_per_key(spec: Spec) -> float:
    """The server's memory over all keys of every database, less its start-up memory."""
    client = _redis(spec)
    try:
        info = client.info("memory")
        keys = sum(int(v["keys"]) for k, v in client.info("keyspace").items())
        return (int(info["used_memory"]) - int(info["used_memory_startup"])) / max(keys, 1)
    finally:
        client.close()


def per_session(spec: Spec, count: int) -> dict[str, float]:
    if spec.backend == "redis":
        return {"memory": redis_per_key(spec), "MEMORY USAGE": redis_sampled(spec)}
    return {part: size / count for part, size in footprint(spec).items()}


def measure_large(places: Places, spec: Spec, count: int, result: Sizing) -> None:
    """Fill a store of its own with 2 KB sessions; record bytes per session; drop it."""
    large = places.spec("fss", spec.backend, "sizing2k", redis_db=REDIS_LARGE_DB)
    app = build_app(large)
    try:
        before = footprint(large) if large.backend == "redis" else {}
        bulk.fill(app, large, count, record=large_record())
        after = footprint(large)
        result.large_count = count
        if large.backend == "redis":
            grown = (after["memory"] - before["memory"]) / count
            result.large = {"memory": grown, "MEMORY USAGE": redis_sampled(large)}
        else:
            result.large = {part: size / count for part, size in after.items()}
    finally:
        close_app(app)
        drop(large)


def drop(spec: Spec) -> None:
    """Remove the store of ``spec`` to give its space back."""
    if spec.backend == "postgres":
        with _pg(spec) as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{bulk.table_of(spec)}"')
    elif spec.backend == "sqlite":
        path = bulk.sqlite_path(spec)
        for suffix in ("", "-wal", "-shm", "-journal"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
    elif spec.backend == "redis":
        client = _redis(spec)
        try:
            client.flushdb()
        finally:
            client.close()


def latencies(app: Flask, cookie: str, path: str) -> list[float]:
    """Seconds of each of up to LATENCY_REQUESTS requests to ``path`` (bounded in time)."""
    environ = make_environ(path, cookie)
    call(app, environ)  # warm-up
    clock = time.perf_counter
    deadline = time.monotonic() + LATENCY_SECONDS
    taken = []
    while len(taken) < LATENCY_REQUESTS and time.monotonic() < deadline:
        start = clock()
        status, _, _ = call(app, environ)
        taken.append(clock() - start)
        if not status.startswith("200"):
            raise RuntimeError(f"{path} answered {status} during the latency run")
    return taken


def wal_position(spec: Spec) -> str | None:
    if spec.backend != "postgres":
        return None
    with _pg(spec) as conn:
        return str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])


def wal_since(spec: Spec, start: str | None) -> int | None:
    if start is None:
        return None
    with _pg(spec) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (start,)).fetchone()
        return int(row[0])


def dead_tuples(spec: Spec) -> tuple[int, int]:
    """(n_dead_tup, autovacuum_count) of ``spec``'s table."""
    with _pg(spec) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        row = conn.execute(
            "SELECT n_dead_tup, autovacuum_count FROM pg_stat_user_tables WHERE relname = %s",
            (bulk.table_of(spec),),
        ).fetchone()
        return int(row[0]), int(row[1])


def set_autovacuum(spec: Spec, enabled: bool) -> None:
    with _pg(spec) as conn:
        on = "true" if enabled else "false"
        conn.execute(f'ALTER TABLE "{bulk.table_of(spec)}" SET (autovacuum_enabled = {on})')


def table_vacuums(spec: Spec) -> tuple[int, int, str]:
    """(n_dead_tup, vacuum_count, last_vacuum) of ``spec``'s table, as the statistics say."""
    with _pg(spec) as conn:
        row = conn.execute(
            "SELECT n_dead_tup, vacuum_count, last_vacuum FROM pg_stat_user_tables"
            " WHERE relname = %s",
            (bulk.table_of(spec),),
        ).fetchone()
        return int(row[0]), int(row[1]), str(row[2])


def vacuum_while_saving(spec: Spec, app: Flask, writer: Writer, result: Sizing) -> None:
    """Run the purge's vacuum, as a large purge does, while ``writer`` keeps saving."""
    from flask_serversession.backends.sql import purge

    backend = app.extensions["serversession"].backend
    writer.take()
    elapsed = stopwatch()
    skipped = purge.vacuum(backend.engine.execution_options(isolation_level="AUTOCOMMIT"),
                           backend.table)  # fmt: skip
    result.vacuum_seconds = elapsed()
    result.during_vacuum = writer.take()
    if skipped is not None:
        note(f"the vacuum after the purge was skipped: {skipped}")


def purge_while_saving(spec: Spec, app: Flask, cookie: str, result: Sizing) -> None:
    """Purge while a thread saves; on PostgreSQL, then the vacuum that a large purge runs.

    On PostgreSQL the two are measured apart: the purge with its vacuum
    turned off, then the same vacuum on its own, with autovacuum off for
    the table meanwhile so that it cannot take the vacuum's place.
    """
    postgres = spec.backend == "postgres"
    backend = app.extensions["serversession"].backend
    if postgres:
        set_autovacuum(spec, False)
        backend.purge_vacuum_share = None
    writer = Writer(app, cookie)
    writer.start()
    try:
        time.sleep(BASELINE_SECONDS)
        result.before = writer.take()
        start = wal_position(spec)
        elapsed = stopwatch()
        result.removed = app.extensions["serversession"].purge_expired()
        result.purge_seconds = elapsed()
        result.during = writer.take()
        result.wal_bytes = wal_since(spec, start)
        if postgres:
            time.sleep(STATS_FLUSH_SECONDS)
            result.dead_after = dead_tuples(spec)[0]
            vacuum_while_saving(spec, app, writer, result)
    finally:
        writer.stopping.set()
        writer.join()
        if postgres:
            backend.purge_vacuum_share = type(backend).purge_vacuum_share
            set_autovacuum(spec, True)
    result.failures = writer.failures
    if postgres:
        time.sleep(STATS_FLUSH_SECONDS)
        dead, count, last = table_vacuums(spec)
        result.autovacuum = f"{dead:,} dead after the vacuum ({count} vacuum, at {last[11:19]})"


def size_up(places: Places, spec: Spec, app: Flask, cookie: str, count: int) -> Sizing:
    result = Sizing(spec.backend, count)
    result.small = per_session(spec, count)
    print(f"  sizing {spec.backend}: {count:,} small sessions measured", flush=True)
    elapsed = stopwatch()
    measure_large(places, spec, min(count, LARGE_MAX), result)
    print(f"  sizing {spec.backend}: 2 KB sessions measured in {elapsed():.1f} s", flush=True)
    if spec.backend != "redis":  # Redis removes expired keys by itself
        result.expired = round(count * EXPIRED_SHARE / (1 - EXPIRED_SHARE))
        elapsed = stopwatch()
        bulk.fill(app, spec, result.expired, expired=True)
        print(f"  added {result.expired:,} expired sessions in {elapsed():.1f} s", flush=True)
    result.read = latencies(app, cookie, "/read")
    result.write = latencies(app, cookie, "/write")
    purge_while_saving(spec, app, cookie, result)
    return result


def _parts(sizes: dict[str, float]) -> str:
    """Total bytes, then its parts when there are several, then Redis' sampled figure."""
    if not sizes:
        return "-"
    counted = {k: v for k, v in sizes.items() if k != "MEMORY USAGE"}
    text = f"{sum(counted.values()):,.0f}"
    if len(counted) > 1:
        text += " (" + " + ".join(f"{k} {v:,.0f}" for k, v in counted.items()) + ")"
    if "MEMORY USAGE" in sizes:
        text += f" (MEMORY USAGE {sizes['MEMORY USAGE']:,.0f})"
    return text


def render(results: t.Sequence[Sizing], load_note: str) -> str:
    size_rows = [
        (r.backend, f"{r.stored:,}", _parts(r.small), f"{r.large_count:,}", _parts(r.large))
        for r in results
    ]
    sizes = table(
        "Sizing: bytes per stored session (small: the ~300-byte seed session; large: 2 KB)",
        ("backend", "stored", "small B/session", "large stored", "large B/session"),
        size_rows,
    )
    rows = []
    for r in results:
        rows.append(
            (
                r.backend,
                f"{r.stored + r.expired:,}",
                f"{r.expired:,}",
                f"{ms(percentile(r.read, 0.5))}/{ms(percentile(r.read, 0.99))}",
                f"{ms(percentile(r.write, 0.5))}/{ms(percentile(r.write, 0.99))}",
                f"{r.removed:,}",
                f"{r.purge_seconds:.2f}",
                ms(max(r.before, default=float("nan"))),
                ms(percentile(r.during, 0.99)),
                ms(max(r.during, default=float("nan"))),
                "-" if r.wal_bytes is None else f"{r.wal_bytes / 2**20:,.1f}",
                "-" if r.dead_after is None else f"{r.dead_after:,}",
                "-" if r.vacuum_seconds is None else f"{r.vacuum_seconds:.2f}",
                ms(max(r.during_vacuum)) if r.during_vacuum else "-",
                r.autovacuum,
            )
        )
    headers = (
        "backend", "stored", "expired", "read p50/p99 ms", "write p50/p99 ms", "purged",
        "purge s", "max write ms before", "p99 write ms during", "max write ms during",
        "WAL MiB", "dead tuples after", "vacuum s", "max write ms during vacuum", "then",
    )  # fmt: skip
    title = (
        f"Sizing: latency with {EXPIRED_SHARE:.0%} expired, then a purge while a thread"
        f" keeps saving a live session; {load_note}"
    )
    return sizes + "\n" + table(title, headers, rows)


def score(results: t.Sequence[Sizing], board: Scoreboard) -> None:
    for r in results:
        subject = f"{r.backend} {r.stored + r.expired:,} stored"
        if r.expired:
            board.exactly("sizing purge removes the expired", subject, r.removed, r.expired)
        board.exactly("no failed save during sizing purge", subject, r.failures, 0)
        worst = max([*r.during, *r.during_vacuum], default=0.0) * 1000
        limit = WAIT_LIMIT_SECONDS * 1000
        board.at_most("write wait during sizing purge", subject, worst, limit, "ms")


def run(
    places: Places,
    stores: t.Sequence[tuple[Spec, Flask, str, int]],
    board: Scoreboard,
    load_note: t.Callable[[], str],
) -> None:
    """Size up each (spec, app, cookie, stored count) store; print the tables."""
    before = load_note()
    results = []
    for spec, app, cookie, count in stores:
        try:
            results.append(size_up(places, spec, app, cookie, count))
        except Exception as e:  # report, and go on with the other backends
            note(f"sizing {count:,} on {spec.backend} failed: {type(e).__name__}: {e}")
    if results:
        print(render(results, f"{before}, after: {load_note()}"), flush=True)
        score(results, board)
