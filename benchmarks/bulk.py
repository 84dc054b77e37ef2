"""Fill a backend with many session records quickly, through the bare driver.

Each filler copies one template record that the backend itself wrote (through
its public ``create``), so the stored format is exactly the backend's; only
the storage keys differ. The copies are made by the driver directly, inside
the server where it can: ``INSERT ... SELECT`` over a generated series
(``sqlite3``, ``psycopg``), a Lua loop (``redis``), plain file copies.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

from apps import SEED
from apps import Spec
from flask import Flask
from flask.sessions import session_json_serializer

from flask_serversession.backends.base import Record

CHUNK = 200_000

# Copies the template hash KEYS[1] to ARGV[2]..ARGV[3] new keys under prefix ARGV[1].
_REDIS_FILL = """
local fields = redis.call('HGETALL', KEYS[1])
local at = redis.call('PEXPIRETIME', KEYS[1])
for i = tonumber(ARGV[2]), tonumber(ARGV[3]) do
  local name = ARGV[1] .. redis.sha1hex(ARGV[4] .. i) .. '000000000000000000000000'
  redis.call('HSET', name, unpack(fields))
  if at > 0 then redis.call('PEXPIREAT', name, at) end
end
return 1
"""


def template(*, expired: bool) -> Record:
    """A record holding the benchmark's seed session, live for a day or expired an hour ago."""
    now = datetime.now(timezone.utc)
    data = {k: session_json_serializer.dumps(v) for k, v in SEED.items()}
    if expired:
        return Record(data, now - timedelta(days=1), now - timedelta(hours=1))
    return Record(data, now, now + timedelta(days=1))


def fill(
    app: Flask, spec: Spec, count: int, *, expired: bool = False, record: Record | None = None
) -> None:
    """Add ``count`` records to the store of ``spec``'s app (copies of ``record`` if given)."""
    if count <= 0:
        return
    key = secrets.token_hex(32)
    record = record or template(expired=expired)
    app.extensions["serversession"].backend.create(key, record)
    fillers: dict[str, t.Callable[[Spec, str, int], None]] = {
        "sqlite": _fill_sqlite,
        "postgres": _fill_postgres,
        "redis": _fill_redis,
        "filesystem": _fill_files,
    }
    fillers[spec.backend](spec, key, count - 1)


def sqlite_path(spec: Spec) -> str:
    return spec.location.removeprefix("sqlite:///")


def table_of(spec: Spec) -> str:
    """The SQL table, or the Redis key prefix, that ``spec``'s app uses."""
    if spec.backend == "redis":
        return spec.table or "serversession:"
    return spec.table or "serversession"


_COLUMNS = "key, data, created_at, expires_at"
_COPIED = "t.data, t.created_at, t.expires_at"


def _fill_sqlite(spec: Spec, key: str, count: int) -> None:
    table = table_of(spec)
    statement = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
        f' INSERT INTO "{table}" ({_COLUMNS})'
        f' SELECT lower(hex(randomblob(32))), {_COPIED} FROM n, "{table}" AS t WHERE t.key = ?'
    )
    conn = sqlite3.connect(sqlite_path(spec), isolation_level=None, timeout=30)
    try:
        done = 0
        while done < count:
            n = min(CHUNK, count - done)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(statement, (n, key))
            conn.execute("COMMIT")
            done += n
    finally:
        conn.close()


def _fill_postgres(spec: Spec, key: str, count: int) -> None:
    import psycopg
    from floors import psycopg_conninfo

    table = table_of(spec)
    statement = (
        f'INSERT INTO "{table}" ({_COLUMNS})'
        f" SELECT encode(sha256(convert_to(%s || i::text, 'UTF8')), 'hex'), {_COPIED}"
        f' FROM generate_series(1, %s) AS i, "{table}" AS t WHERE t.key = %s'
    )
    with psycopg.connect(psycopg_conninfo(spec.location), autocommit=True) as conn:
        done = 0
        while done < count:
            n = min(CHUNK, count - done)
            conn.execute(statement, (secrets.token_hex(8), n, key))
            done += n
        # What autovacuum would have done by the time a table grew this big.
        conn.execute(f'VACUUM ANALYZE "{table}"')
        # The fill's write-ahead log would start a checkpoint in what is
        # measured next; a checkpoint's sync stalls every commit meanwhile.
        conn.execute("CHECKPOINT")


def _fill_redis(spec: Spec, key: str, count: int) -> None:
    import redis

    client = redis.Redis.from_url(spec.location)
    try:
        script = client.register_script(_REDIS_FILL)
        prefix = table_of(spec)
        salt = secrets.token_hex(8)
        step = CHUNK // 4
        for start in range(1, count + 1, step):
            end = min(start + step - 1, count)
            script(keys=[prefix + key], args=[prefix, start, end, salt])
    finally:
        client.close()


def _fill_files(spec: Spec, key: str, count: int) -> None:
    """Copy the template file to ``count`` new names, in the backend's shard layout."""
    with open(os.path.join(spec.location, key[:2], key), "rb") as f:
        content = f.read()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for _ in range(count):
        name = secrets.token_hex(32)
        shard = os.path.join(spec.location, name[:2])
        try:
            fd = os.open(os.path.join(shard, name), flags, 0o600)
        except FileNotFoundError:
            os.makedirs(shard, mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(shard, name), flags, 0o600)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)


def delete_expired_at_once(spec: Spec) -> tuple[int, float]:
    """Delete every expired copy in one bare-driver transaction; return (rows, seconds).

    The floor of a purge: one statement through the expiry index, no
    batches, and so no room for a concurrent save until it is done. The
    copies share the earliest expiry in the table.
    """
    table = table_of(spec)
    statement = f'DELETE FROM "{table}" WHERE expires_at <= (SELECT min(expires_at) FROM "{table}")'
    if spec.backend == "sqlite":
        conn = sqlite3.connect(sqlite_path(spec), isolation_level=None, timeout=30)
        try:
            conn.execute("PRAGMA synchronous = NORMAL")
            start = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            removed = conn.execute(statement).rowcount
            conn.execute("COMMIT")
            return removed, time.perf_counter() - start
        finally:
            conn.close()
    import psycopg
    from floors import psycopg_conninfo

    with psycopg.connect(psycopg_conninfo(spec.location), autocommit=True) as pg:
        start = time.perf_counter()
        removed = pg.execute(statement).rowcount
        return removed, time.perf_counter() - start
