"""Benchmark Flask-ServerSession against Flask's cookie session and Flask-Session 0.8.

Run ``python benchmarks/run.py --help``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import sqlite3
import sys
import tempfile
import typing as t
from importlib import metadata

from lineup import ALL_BACKENDS
from lineup import Places
from servers import Servers
from stats import Budget
from stats import stopwatch
from targets import Scoreboard

SECTIONS = ("micro", "roundtrips", "scale", "purge", "concurrency")


def parse_args(argv: t.Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds and smaller counts (under 3 minutes)"
    )
    parser.add_argument(
        "--only",
        metavar="SECTION",
        action="append",
        choices=SECTIONS,
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--backend",
        metavar="NAME",
        action="append",
        choices=ALL_BACKENDS,
        help=f"run only this backend (repeatable): {', '.join(ALL_BACKENDS)}",
    )
    parser.add_argument(
        "--sessions",
        metavar="N",
        type=int,
        action="append",
        help="stored-session counts for the scale section (repeatable)",
    )
    parser.add_argument(
        "--purge-sessions",
        metavar="N",
        type=int,
        action="append",
        help="expired-session counts for the purge section (repeatable)",
    )
    parser.add_argument("--rounds", type=int, help="timing rounds per figure (default 7, quick 5)")
    parser.add_argument(
        "--requests", type=int, help="requests per client in the concurrency section"
    )
    return parser.parse_args(argv)


def versions() -> list[tuple[str, str]]:
    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return [
        ("CPU", f"{cpu}, {os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))})"),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("Flask", dist("flask")),
        ("Werkzeug", dist("werkzeug")),
        ("Flask-ServerSession", dist("flask-serversession")),
        ("Flask-Session", dist("flask-session")),
        ("SQLAlchemy", dist("sqlalchemy")),
        ("SQLite", sqlite3.sqlite_version),
        ("psycopg", dist("psycopg")),
        ("redis-py", dist("redis")),
        ("waitress", dist("waitress")),
    ]


def print_machine(servers: Servers) -> None:
    rows = versions()
    if servers.postgres is not None:
        rows.append(("PostgreSQL", servers.postgres.version()))
    if servers.redis is not None:
        rows.append(("Redis", servers.redis.version()))
    width = max(len(name) for name, _ in rows)
    print("Machine and versions\n")
    for name, value in rows:
        print(f"  {name.ljust(width)}  {value}")
    print(flush=True)


def budget_for(args: argparse.Namespace) -> Budget:
    if args.quick:
        return Budget(rounds=args.rounds or 5, batch_seconds=0.05, max_calls=5_000)
    return Budget(rounds=args.rounds or 7)


def run_sections(args: argparse.Namespace, places: Places, board: Scoreboard) -> None:
    sections = args.only or SECTIONS
    backends = args.backend or ALL_BACKENDS
    budget = budget_for(args)
    if "micro" in sections:
        import micro

        micro.run(places, budget, backends, board)
    if "roundtrips" in sections:
        import roundtrips

        roundtrips.run(places, backends)
    if "scale" in sections:
        import scale

        counts = args.sessions or ([1_000, 20_000, 100_000] if args.quick else None)
        scale.run(places, budget, backends, board, counts=counts)
    if "purge" in sections:
        import purge

        counts = args.purge_sessions or ([10_000, 50_000] if args.quick else None)
        purge.run(places, backends, board, counts=counts)
    if "concurrency" in sections:
        import concurrency

        concurrency.run(places, backends, board, quick=args.quick, requests=args.requests)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: t.Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    backends = args.backend or ALL_BACKENDS
    elapsed = stopwatch()
    directory = tempfile.mkdtemp(prefix="serversession-bench-")
    board = Scoreboard()
    try:
        with Servers(
            want_redis="redis" in backends, want_postgres="postgres" in backends
        ) as servers:
            print_machine(servers)
            run_sections(args, Places(directory, servers), board)
            print(board.render())
    except KeyboardInterrupt:
        print("\nInterrupted; servers stopped.", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"Finished in {elapsed():.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
