"""Fill a backend with many session records quickly, through its fastest path.

Each filler copies one template record that the backend itself wrote, so the
stored format is exactly the backend's; only the storage keys differ.
"""

from __future__ import annotations

import os
import secrets
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

from apps import SEED
from flask import Flask
from flask.sessions import session_json_serializer

from flask_serversession.backends.base import Backend
from flask_serversession.backends.base import Record

CHUNK = 50_000

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


def backend_of(app: Flask) -> Backend:
    return t.cast(Backend, app.extensions["serversession"].backend)


def template(*, expired: bool) -> Record:
    """A record holding the benchmark's seed session, live for a day or expired an hour ago."""
    now = datetime.now(timezone.utc)
    data = {k: session_json_serializer.dumps(v) for k, v in SEED.items()}
    if expired:
        return Record(data, now - timedelta(days=1), now - timedelta(hours=1))
    return Record(data, now, now + timedelta(days=1))


def fill(app: Flask, backend_name: str, count: int, *, expired: bool = False) -> None:
    """Add ``count`` records to the app's backend."""
    if count <= 0:
        return
    backend = backend_of(app)
    key = secrets.token_hex(32)
    backend.create(key, template(expired=expired))
    fillers = {"sqlite": _fill_sql, "postgres": _fill_sql, "redis": _fill_redis}
    fillers.get(backend_name, _fill_files)(backend, key, count - 1)


def _fill_sql(backend: t.Any, key: str, count: int) -> None:
    import sqlalchemy as sa

    name = backend.engine.dialect.identifier_preparer.quote(backend.table.name)
    columns = "key, data, created_at, expires_at"
    copied = "t.data, t.created_at, t.expires_at"
    if backend.engine.dialect.name == "sqlite":
        statement = (
            f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count)"
            f" INSERT INTO {name} ({columns})"
            f" SELECT lower(hex(randomblob(32))), {copied} FROM n, {name} AS t WHERE t.key = :key"
        )
    else:
        statement = (
            f"INSERT INTO {name} ({columns})"
            f" SELECT encode(sha256(convert_to(:salt || i::text, 'UTF8')), 'hex'), {copied}"
            f" FROM generate_series(1, :count) AS i, {name} AS t WHERE t.key = :key"
        )
    done = 0
    while done < count:
        n = min(CHUNK * 4, count - done)
        with backend.engine.begin() as conn:
            conn.execute(sa.text(statement), {"count": n, "key": key, "salt": secrets.token_hex(8)})
        done += n
    if backend.engine.dialect.name == "postgresql":
        # What autovacuum would have done by the time a table grew this big.
        with backend.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f"VACUUM ANALYZE {name}"))


def _fill_redis(backend: t.Any, key: str, count: int) -> None:
    script = backend.client.register_script(_REDIS_FILL)
    salt = secrets.token_hex(8)
    for start in range(1, count + 1, CHUNK):
        end = min(start + CHUNK - 1, count)
        script(keys=[backend.key_prefix + key], args=[backend.key_prefix, start, end, salt])


def _fill_files(backend: t.Any, key: str, count: int) -> None:
    """Copy the template file to ``count`` new names, sharded as the backend does."""
    with open(backend._path(key), "rb") as f:
        content = f.read()
    for _ in range(count):
        name = secrets.token_hex(32)
        shard = os.path.join(backend.directory, name[:2])
        try:
            fd = os.open(os.path.join(shard, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:
            os.makedirs(shard, mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(shard, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)
