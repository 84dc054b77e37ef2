"""What the storage itself costs: each scenario's operations through the bare driver.

A backend's floor for a scenario is the memory backend's cost for that
scenario through the WSGI app (Flask, the session layer, the serializer)
plus the time the bare driver takes for the storage operations the scenario
needs: ``sqlite3``, ``psycopg`` and ``redis`` used directly, ``os`` calls for
files. The operations, on a row or hash or file shaped as the backend's own
(seven keys, about 300 bytes):

* read: one keyed read;
* write: one keyed read and one atomic conditional update that merges one
  key and moves the expiry only if the record is still live;
* new: one insert of a new record.

The filesystem floor is given twice: with and without ``fsync`` of the new
file before its rename.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import sqlite3
import time
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

from apps import SEED
from flask.sessions import session_json_serializer

#: Runs ``n`` operations and returns the elapsed seconds.
Batch = t.Callable[[int], float]

#: What each scenario's floor runs through the driver, for the tables.
OPERATIONS = {
    "read": "1 keyed read",
    "write": "1 keyed read + 1 conditional update",
    "new": "1 insert",
}

_DDL_SQLITE = (
    "CREATE TABLE IF NOT EXISTS {t} (key VARCHAR(64) NOT NULL PRIMARY KEY, data TEXT NOT NULL,"
    " created_at DATETIME NOT NULL, expires_at DATETIME NOT NULL)"
)
_DDL_POSTGRES = (
    "CREATE TABLE IF NOT EXISTS {t} (key VARCHAR(64) NOT NULL PRIMARY KEY, data TEXT NOT NULL,"
    " created_at TIMESTAMP WITH TIME ZONE NOT NULL,"
    " expires_at TIMESTAMP WITH TIME ZONE NOT NULL)"
)
_INDEX = "CREATE INDEX IF NOT EXISTS ix_{t}_expires_at ON {t} (expires_at)"

# Sets one field and the expiry of a hash that still exists; 1 if it did, else 0.
_REDIS_UPDATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4], 'expires_us', ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
"""

# Writes a new hash and its expiry in one step (ARGV: expire_at_ms, then
# field/value pairs): the cheapest atomic insert, one command to parse.
_REDIS_INSERT = """
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIREAT', KEYS[1], ARGV[1])
return 1
"""


def stored_values() -> dict[str, str]:
    """The seed session as the backends store it: tagged JSON text by key."""
    return {k: session_json_serializer.dumps(v) for k, v in SEED.items()}


def _patch() -> str:
    return json.dumps({"counter": session_json_serializer.dumps(41)})


def _new_keys() -> t.Iterator[str]:
    """Random 64-hex storage keys, as sha256 hex digests are: inserts land all over an index."""
    return (os.urandom(32).hex() for _ in itertools.repeat(None))


def _micros(value: datetime) -> int:
    return (value - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)


class Floor:
    """The driver operations of one backend; ``batches()`` gives one per scenario."""

    def batches(self) -> dict[str, Batch]:
        return {"read": self.read, "write": self.write, "new": self.new}

    def read(self, n: int) -> float:
        raise NotImplementedError

    def write(self, n: int) -> float:
        raise NotImplementedError

    def new(self, n: int) -> float:
        raise NotImplementedError

    def close(self) -> None:
        return None


class SQLiteFloor(Floor):
    """``sqlite3`` on its own file with the backend's settings: WAL, synchronous NORMAL."""

    def __init__(self, path: str, table: str = "floor_sessions") -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        for pragma in ("busy_timeout = 30000", "journal_mode = WAL", "synchronous = NORMAL"):
            self.conn.execute(f"PRAGMA {pragma}")
        self.conn.execute(_DDL_SQLITE.format(t=table))
        self.conn.execute(_INDEX.format(t=table))
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        self.created = now.isoformat(" ", "microseconds")
        self.expires = (now + timedelta(days=1)).isoformat(" ", "microseconds")
        self.now = self.created
        self.key = secrets.token_hex(32)
        self.data = json.dumps(stored_values())
        self.patch = _patch()
        self.select = f"SELECT key, data, created_at, expires_at FROM {table} WHERE key = ?"
        self.update = (
            f"UPDATE {table} SET data = json_patch(data, ?), expires_at = ?"
            " WHERE key = ? AND expires_at > ?"
        )
        self.insert = f"INSERT INTO {table} (key, data, created_at, expires_at) VALUES (?, ?, ?, ?)"
        self.conn.execute(self.insert, (self.key, self.data, self.created, self.expires))
        self.keys = _new_keys()

    def read(self, n: int) -> float:
        execute, select, key = self.conn.execute, self.select, (self.key,)
        start = time.perf_counter()
        for _ in range(n):
            execute(select, key).fetchone()
        return time.perf_counter() - start

    def write(self, n: int) -> float:
        execute, select, update = self.conn.execute, self.select, self.update
        key, args = (self.key,), (self.patch, self.expires, self.key, self.now)
        start = time.perf_counter()
        for _ in range(n):
            execute(select, key).fetchone()
            if execute(update, args).rowcount != 1:
                raise RuntimeError("the floor's conditional update matched no row")
        return time.perf_counter() - start

    def new(self, n: int) -> float:
        execute, insert, keys = self.conn.execute, self.insert, self.keys
        data, created, expires = self.data, self.created, self.expires
        start = time.perf_counter()
        for _ in range(n):
            execute(insert, (next(keys), data, created, expires))
        return time.perf_counter() - start

    def close(self) -> None:
        self.conn.close()


def psycopg_conninfo(url: str) -> str:
    """Turn the benchmark's SQLAlchemy URL into a libpq connection string."""
    import sqlalchemy as sa

    u = sa.make_url(url)
    parts = {"host": u.host, "port": u.port, "user": u.username, "dbname": u.database}
    return " ".join(f"{k}={v}" for k, v in parts.items() if v)


class PostgresFloor(Floor):
    """``psycopg`` in autocommit mode (each statement its own transaction), as the backend."""

    def __init__(self, url: str, table: str = "floor_sessions") -> None:
        import psycopg

        self.conn = psycopg.connect(psycopg_conninfo(url), autocommit=True)
        self.cur = self.conn.cursor()
        self.cur.execute(_DDL_POSTGRES.format(t=table))
        self.cur.execute(_INDEX.format(t=table))
        now = datetime.now(timezone.utc)
        self.created, self.expires, self.now = now, now + timedelta(days=1), now
        self.key = secrets.token_hex(32)
        self.data = json.dumps(stored_values())
        self.patch = _patch()
        self.select = f"SELECT key, data, created_at, expires_at FROM {table} WHERE key = %s"
        self.update = (
            f"UPDATE {table} SET data = (data::jsonb || %s::jsonb)::text, expires_at = %s"
            " WHERE key = %s AND expires_at > %s"
        )
        self.insert = (
            f"INSERT INTO {table} (key, data, created_at, expires_at) VALUES (%s, %s, %s, %s)"
        )
        self.cur.execute(self.insert, (self.key, self.data, self.created, self.expires))
        self.keys = _new_keys()

    def read(self, n: int) -> float:
        cur, select, key = self.cur, self.select, (self.key,)
        start = time.perf_counter()
        for _ in range(n):
            cur.execute(select, key)
            cur.fetchone()
        return time.perf_counter() - start

    def write(self, n: int) -> float:
        cur, select, update = self.cur, self.select, self.update
        key, args = (self.key,), (self.patch, self.expires, self.key, self.now)
        start = time.perf_counter()
        for _ in range(n):
            cur.execute(select, key)
            cur.fetchone()
            cur.execute(update, args)
            if cur.rowcount != 1:
                raise RuntimeError("the floor's conditional update matched no row")
        return time.perf_counter() - start

    def new(self, n: int) -> float:
        cur, insert, keys = self.cur, self.insert, self.keys
        data, created, expires = self.data, self.created, self.expires
        start = time.perf_counter()
        for _ in range(n):
            cur.execute(insert, (next(keys), data, created, expires))
        return time.perf_counter() - start

    def close(self) -> None:
        self.conn.close()


class RedisFloor(Floor):
    """``redis-py`` on one hash per session: HGETALL; a script for the conditional update."""

    def __init__(self, url: str, prefix: str = "floor:") -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.prefix = prefix
        now = datetime.now(timezone.utc)
        expires = now + timedelta(days=1)
        self.expires_us = _micros(expires)
        self.expires_ms = -(-self.expires_us // 1000)
        self.mapping: dict[t.Any, t.Any] = {f"d:{k}": v for k, v in stored_values().items()}
        self.mapping["created_us"] = _micros(now)
        self.mapping["expires_us"] = self.expires_us
        self.name = prefix + secrets.token_hex(32)
        self.client.hset(self.name, mapping=self.mapping)
        self.client.pexpireat(self.name, self.expires_ms)
        self.sha = self.client.script_load(_REDIS_UPDATE)
        self.insert_sha = self.client.script_load(_REDIS_INSERT)
        self.value = session_json_serializer.dumps(41)
        self.keys = _new_keys()

    def read(self, n: int) -> float:
        hgetall, name = self.client.hgetall, self.name
        start = time.perf_counter()
        for _ in range(n):
            hgetall(name)
        return time.perf_counter() - start

    def write(self, n: int) -> float:
        hgetall, evalsha, name = self.client.hgetall, self.client.evalsha, self.name
        args = (self.expires_us, self.expires_ms, "d:counter", self.value)
        start = time.perf_counter()
        for _ in range(n):
            hgetall(name)
            if evalsha(self.sha, 1, name, *args) != 1:
                raise RuntimeError("the floor's conditional update found no hash")
        return time.perf_counter() - start

    def new(self, n: int) -> float:
        evalsha, sha, keys = self.client.evalsha, self.insert_sha, self.keys
        pairs = [part for item in self.mapping.items() for part in item]
        prefix, expires_ms = self.prefix, self.expires_ms
        start = time.perf_counter()
        for _ in range(n):
            evalsha(sha, 1, prefix + next(keys), expires_ms, *pairs)
        return time.perf_counter() - start

    def close(self) -> None:
        self.client.close()


class FilesFloor(Floor):
    """``os`` calls on one file per session in a shard directory.

    A write reads the file, writes a temporary file (``fsync``-ed when
    ``sync``), and renames it over the old one; a new session is the same
    without the read, under a new name.
    """

    _READ = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    _TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW

    def __init__(self, directory: str, *, sync: bool) -> None:
        self.sync = sync
        self.key = secrets.token_hex(32)
        self.directory = directory
        self.shard = os.path.join(directory, self.key[:2])
        for shard in range(256):
            os.makedirs(os.path.join(directory, f"{shard:02x}"), mode=0o700, exist_ok=True)
        self.path = os.path.join(self.shard, self.key)
        # The backend's layout: a 28-byte header, then the values as JSON.
        self.content = b"FSS\x01" + bytes(24) + json.dumps(stored_values()).encode()
        self._replace(self.path)
        self.keys = _new_keys()

    def _replace(self, path: str) -> None:
        """Write the content to a temp file beside ``path`` and rename it over ``path``."""
        temp = path[:-64] + ".tmp-floor.part"
        fd = os.open(temp, self._TEMP, 0o600)
        try:
            os.write(fd, self.content)
            if self.sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)

    def _read(self) -> bytes:
        fd = os.open(self.path, self._READ)
        try:
            return os.read(fd, 1 << 16)
        finally:
            os.close(fd)

    def read(self, n: int) -> float:
        read = self._read
        start = time.perf_counter()
        for _ in range(n):
            read()
        return time.perf_counter() - start

    def write(self, n: int) -> float:
        read, replace, path = self._read, self._replace, self.path
        start = time.perf_counter()
        for _ in range(n):
            read()
            replace(path)
        return time.perf_counter() - start

    def new(self, n: int) -> float:
        replace, keys, join, directory = self._replace, self.keys, os.path.join, self.directory
        start = time.perf_counter()
        for _ in range(n):
            key = next(keys)
            replace(join(directory, key[:2], key))
        return time.perf_counter() - start


def floors_for(backend: str, location: str, directory: str) -> dict[str, Floor]:
    """Return the floors of ``backend`` by label; the filesystem has two.

    :param location: the Redis or PostgreSQL URL the backend's contender uses.
    :param directory: the run's scratch directory.
    """
    if backend == "sqlite":
        return {"": SQLiteFloor(os.path.join(directory, "floor.sqlite"))}
    if backend == "postgres":
        return {"": PostgresFloor(location)}
    if backend == "redis":
        return {"": RedisFloor(location)}
    if backend == "filesystem":
        return {
            "fsync": FilesFloor(os.path.join(directory, "floor-files-sync"), sync=True),
            "no fsync": FilesFloor(os.path.join(directory, "floor-files-nosync"), sync=False),
        }
    return {}
