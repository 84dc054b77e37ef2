"""Fill the default SQLite store with N sessions, then time ``flask serversession migrate``.

Not part of the test run. The sessions are copies of one record that the SQL
backend itself wrote, made by SQLite in one statement; the command then runs
as a user runs it, in its own process, into a throwaway PostgreSQL or Redis:

    python benchmarks/migrate.py --sessions 100000 --to redis
    python benchmarks/migrate.py --sessions 100000 --to postgres

It prints the command's output and its wall time, and checks the counts.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import time
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from pathlib import Path

from flask import Flask

HERE = Path(__file__).resolve().parent
PREFIX = "BENCH_MIGRATE"


def create_app() -> Flask:
    """The app the command runs in: configured from ``BENCH_MIGRATE_*`` variables."""
    from flask_serversession import ServerSession

    app = Flask(__name__, instance_path=os.environ.get(f"{PREFIX}_INSTANCE", tempfile.gettempdir()))
    app.config.from_prefixed_env(PREFIX)
    ServerSession(app)
    return app


def fill_sqlite(uri: str, count: int) -> None:
    """Store ``count`` live sessions in the SQLite file of ``uri``."""
    from flask_serversession.backends.base import Record
    from flask_serversession.backends.sql import SQLAlchemyBackend

    backend = SQLAlchemyBackend.from_url(uri)
    now = datetime.now(timezone.utc)
    data = {"user_id": '"42"', "cart": "[1,2,3]", "csrf": json.dumps(secrets.token_hex(16))}
    key = secrets.token_hex(32)
    backend.create(key, Record(data, now, now + timedelta(days=1)))
    backend.close()
    conn = sqlite3.connect(uri.removeprefix("sqlite:///"), isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO serversession (key, data, created_at, expires_at)"
            " SELECT lower(hex(randomblob(32))), t.data, t.created_at, t.expires_at"
            " FROM n, serversession AS t WHERE t.key = ?",
            (count - 1, key),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


def target(name: str, stack: list[t.Any]) -> dict[str, str]:
    """Start a throwaway server for the new store; return its settings."""
    from servers import PostgresServer
    from servers import RedisServer

    if name == "redis":
        redis_server = RedisServer()
        stack.append(redis_server)
        return {"SERVERSESSION_BACKEND": "redis", "SERVERSESSION_REDIS_URL": redis_server.url()}
    postgres = PostgresServer()
    stack.append(postgres)
    url = postgres.url().replace("postgresql://", "postgresql+psycopg://", 1)
    return {"SERVERSESSION_BACKEND": "sqlalchemy", "SERVERSESSION_SQLALCHEMY_URI": url}


def flask(env: dict[str, str], *args: str) -> tuple[str, float]:
    """Run ``flask serversession ARGS`` in its own process; return its output and wall time."""
    command = [sys.executable, "-m", "flask", "--app", "migrate:create_app()", "serversession"]
    started = time.monotonic()
    result = subprocess.run(
        [*command, *args], cwd=HERE, env=env, capture_output=True, text=True, check=False
    )
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"flask serversession {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout + result.stderr, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--to", choices=("redis", "postgres"), default="redis")
    parser.add_argument("--batch-size", type=int, default=1000)
    options = parser.parse_args()
    stack: list[t.Any] = []
    with tempfile.TemporaryDirectory(prefix="bench-migrate-") as directory:
        old_uri = f"sqlite:///{directory}/serversession.sqlite"
        try:
            new = target(options.to, stack)
            started = time.monotonic()
            fill_sqlite(old_uri, options.sessions)
            print(
                f"filled {options.sessions} SQLite sessions in {time.monotonic() - started:.1f} s"
            )
            old = {"SERVERSESSION_BACKEND": "sqlalchemy", "SERVERSESSION_SQLALCHEMY_URI": old_uri}
            settings = {**new, "SECRET_KEY": secrets.token_hex(16), "INSTANCE": directory}
            settings["SERVERSESSION_MIGRATE_FROM"] = json.dumps(old)
            python_path = os.pathsep.join(
                filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")])
            )
            env = {**os.environ, "PYTHONPATH": python_path}
            env.update({f"{PREFIX}_{k}": v for k, v in settings.items()})
            for args in (
                ["count"],
                ["migrate", "--dry-run"],
                ["migrate", "--batch-size", str(options.batch_size)],
                ["count"],
            ):
                output, elapsed = flask(env, *args)
                print(f"$ flask serversession {' '.join(args)}    # {elapsed:.1f} s wall")
                print(output.rstrip())
        finally:
            for server in reversed(stack):
                server.stop()


if __name__ == "__main__":
    main()
