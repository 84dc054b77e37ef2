"""What the live-sessions gauge costs: ``count()`` of each backend at a given number of sessions.

Usage: python benchmarks/live_count.py [N ...] [--backends sqlite,postgres,redis,filesystem]

For each backend and each N (default 100,000 and 1,000,000; the filesystem at
most 100,000), the store is filled with N live sessions by ``bulk.py``'s
fillers, then ``count()`` runs five times; the median and the slowest are
printed, with the machine's load average. Two sizes show how the cost grows
(linear where count() walks every session). Redis and PostgreSQL are started
on loopback ports by ``servers.py``; everything lives under a temporary
directory removed at the end.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from datetime import timezone

from apps import build_app
from apps import close_app
from apps import Spec
from bulk import fill
from servers import PostgresServer
from servers import RedisServer

RUNS = 5
FILE_LIMIT = 100_000


def spec_for(backend: str, n: int, base: str, redis: RedisServer | None,
             postgres: PostgresServer | None) -> Spec:  # fmt: skip
    if backend == "sqlite":
        return Spec("fss", "sqlite", f"sqlite:///{base}/count{n}.db", f"count{n}")
    if backend == "postgres":
        assert postgres is not None
        return Spec("fss", "postgres", postgres.url(), f"count{n}")
    if backend == "redis":
        assert redis is not None
        return Spec("fss", "redis", redis.url(), f"count{n}:")
    directory = os.path.join(base, f"files{n}")
    os.makedirs(directory)
    return Spec("fss", "filesystem", directory)


def measure(spec: Spec, n: int) -> tuple[float, float, int]:
    """Fill ``n`` sessions; return (median, slowest) seconds of count() and what it counted."""
    app = build_app(spec)
    try:
        fill(app, spec, n)
        backend = app.extensions["serversession"].backend
        times, counted = [], 0
        for _ in range(RUNS):
            started = time.perf_counter()
            counted = backend.count(datetime.now(timezone.utc))
            times.append(time.perf_counter() - started)
        backend.clear()
        return statistics.median(times), max(times), counted
    finally:
        close_app(app)


def main(argv: list[str]) -> int:
    backends = ["sqlite", "postgres", "redis", "filesystem"]
    sizes = []
    for arg in argv:
        if arg.startswith("--backends="):
            backends = arg.split("=", 1)[1].split(",")
        else:
            sizes.append(int(arg.replace("_", "")))
    sizes = sizes or [100_000, 1_000_000]
    base = tempfile.mkdtemp(prefix="serversession-count-")
    redis = RedisServer() if "redis" in backends else None
    postgres = PostgresServer() if "postgres" in backends else None
    try:
        print("count() of N live sessions: median and slowest of 5 runs")
        for backend in backends:
            for n in sizes:
                if backend == "filesystem" and n > FILE_LIMIT:
                    continue
                spec = spec_for(backend, n, base, redis, postgres)
                median, slowest, counted = measure(spec, n)
                load = os.getloadavg()[0]
                print(f"  {backend:10} {n:>10,}  median {median * 1000:9.1f} ms"
                      f"  slowest {slowest * 1000:9.1f} ms  (counted {counted:,}; load {load:.1f})",
                      flush=True)  # fmt: skip
    finally:
        for server in (redis, postgres):
            if server is not None:
                server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
