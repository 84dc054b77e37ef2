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
import subprocess
import sys
import tempfile
import typing as t
from importlib import metadata

import stats
from lineup import ALL_BACKENDS
from lineup import Places
from servers import Servers
from stats import Budget
from stats import load
from stats import stopwatch
from targets import Scoreboard

SECTIONS = (
    "micro",
    "instructions",
    "roundtrips",
    "scale",
    "purge",
    "concurrency",
    "profile",
    "users",
    "redis-cpu",
)


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
    parser.add_argument(
        "--users-stored",
        metavar="N",
        type=int,
        help="stored sessions in the users section (default 1,000,000)",
    )
    parser.add_argument("--rounds", type=int, help="timing rounds per figure (default 9, quick 7)")
    parser.add_argument(
        "--requests", type=int, help="requests per client in the concurrency section"
    )
    parser.add_argument(
        "--count-requests",
        metavar="N",
        type=int,
        help="requests of the first counted segment in the instructions section"
        " (the second has 5N; default 20, quick 8)",
    )
    parser.add_argument(
        "--quiet-wait",
        metavar="SECONDS",
        type=float,
        default=0.0,
        help="before each table, wait up to SECONDS for other processes to leave the cores"
        " mostly idle (default 0: do not wait)",
    )
    parser.add_argument(
        "--library",
        metavar="DIR",
        help="import flask_serversession from DIR (e.g. an export of another commit), here"
        " and in every server and profiled process",
    )
    return parser.parse_args(argv)


def our_version() -> str:
    """The version of the package measured, as it says itself (an editable install's
    metadata may be older)."""
    try:
        import flask_serversession
    except ImportError:
        return "not installed"
    return flask_serversession.__version__


def versions() -> list[tuple[str, str]]:
    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu, ram = "unknown", "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/meminfo") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        ram = f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    return [
        ("CPU", f"{cpu}, {os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))})"),
        ("RAM", ram),
        ("Load at start", load()),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("Flask", dist("flask")),
        ("Werkzeug", dist("werkzeug")),
        ("Flask-ServerSession", f"{our_version()} from {library_source()}"),
        ("Flask-Session", dist("flask-session")),
        ("SQLAlchemy", dist("sqlalchemy")),
        ("SQLite", sqlite3.sqlite_version),
        ("psycopg", dist("psycopg")),
        ("redis-py", dist("redis")),
        ("gunicorn", dist("gunicorn")),
        ("py-spy", py_spy_version()),
    ]


def py_spy_version() -> str:
    try:
        result = subprocess.run(["py-spy", "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "not installed"
    return result.stdout.strip().removeprefix("py-spy ") or "unknown"


def library_source() -> str:
    """Where flask_serversession is imported from, and the commit of that checkout."""
    import flask_serversession

    directory = os.path.dirname(os.path.dirname(os.path.abspath(flask_serversession.__file__)))
    try:
        result = subprocess.run(
            ["git", "-C", directory, "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        commit = result.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{directory} ({commit})" if commit else directory


def use_library(directory: str) -> None:
    """Import flask_serversession from ``directory``, here and in child processes."""
    directory = os.path.abspath(directory)
    if not os.path.isdir(os.path.join(directory, "flask_serversession")):
        raise SystemExit(f"{directory} holds no flask_serversession package")
    sys.path.insert(0, directory)
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = directory + (os.pathsep + path if path else "")


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
        return Budget(rounds=args.rounds or 7, batch_seconds=0.04, max_calls=5_000)
    return Budget(rounds=args.rounds or 9, batch_seconds=0.12)


def run_sections(args: argparse.Namespace, places: Places, board: Scoreboard) -> None:
    sections = args.only or SECTIONS
    backends = args.backend or ALL_BACKENDS
    budget = budget_for(args)
    if "micro" in sections:
        import micro

        micro.run(places, budget, backends, board)
    if "instructions" in sections:
        import instructions

        instructions.run(places, backends, board, quick=args.quick, requests=args.count_requests)
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
    if "profile" in sections:
        import profiling

        profiling.run(places, backends, quick=args.quick)
    if "users" in sections:
        import users

        stored = args.users_stored or (100_000 if args.quick else None)
        users.run(places, budget, backends, board, stored=stored)
    if "redis-cpu" in sections and "redis" in backends:
        import redis_cpu

        redis_cpu.run(places, board, quick=args.quick, rounds=args.rounds)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: t.Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.library:
        use_library(args.library)
    stats.QUIET_WAIT_SECONDS = args.quiet_wait
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
