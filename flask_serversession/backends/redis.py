from __future__ import annotations

import contextlib
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from urllib.parse import urlsplit

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import RedisClusterException
from redis.exceptions import RedisError
from redis.exceptions import ResponseError
from redis.retry import Retry

from ..errors import BackendError
from .base import Backend
from .base import CorruptRecordError
from .base import Delta
from .base import logger
from .base import Record

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_DATA = "d:"
_CREATED = "created_us"
_EXPIRES = "expires_us"
_BATCH = 500

# Applies a delta to a live session in one atomic step and returns 1, or
# returns 0 and writes nothing when the hash is gone (destroyed, regenerated,
# expired) or its stored expiry has passed by the app's clock. Redis refuses a
# script (READONLY, OOM) only at its first write and the TYPE check rules out
# WRONGTYPE, so it never stops half-way. ARGV: now_us, expires_us,
# expire_at_ms, n_set, n_set field/value pairs, then the fields to delete.
_UPDATE_SCRIPT = """
if redis.call('TYPE', KEYS[1]).ok ~= 'hash' then return 0 end
local stored = tonumber(redis.call('HGET', KEYS[1], 'expires_us'))
if stored == nil or stored <= tonumber(ARGV[1]) then return 0 end
local last = 4 + 2 * tonumber(ARGV[4])
for i = last + 1, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
for i = 5, last, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'expires_us', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
"""


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


def _expire_at_ms(value: datetime) -> int:
    # Round up, so Redis never drops a session before its ``expires_at``.
    return -(-_micros(value) // 1000)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _escape_glob(value: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in value)


def _decode(fields: t.Mapping[t.Any, t.Any]) -> Record:
    """Build a record from the fields of a session hash."""
    try:
        decoded = {_text(k): _text(v) for k, v in fields.items()}
        created_at = _EPOCH + int(decoded.pop(_CREATED)) * _MICROSECOND
        expires_at = _EPOCH + int(decoded.pop(_EXPIRES)) * _MICROSECOND
    except (KeyError, ValueError, OverflowError) as e:
        raise CorruptRecordError(f"bad session hash metadata: {e!r}") from e
    data = {}
    for name, value in decoded.items():
        if not name.startswith(_DATA):
            raise CorruptRecordError(f"unexpected field {name!r} in session hash")
        data[name[len(_DATA) :]] = value
    return Record(data=data, created_at=created_at, expires_at=expires_at)


class RedisBackend(Backend):
    """Keep each session in a Redis hash that Redis expires by itself.

    The hash at ``key_prefix + key`` holds one ``d:<name>`` field per session
    key plus ``created_us`` and ``expires_us`` (microseconds since the epoch);
    ``PEXPIREAT`` removes it when it expires, so :meth:`purge_expired` does
    nothing. Loads and saves each take one round trip: a save is a ``MULTI``
    block or a Lua script, so a failed save never leaves a half-written hash.
    Works with a plain client, a ``RedisCluster`` and a Sentinel
    ``master_for()`` client; no server is contacted until first use.

    :param client: a ready ``redis.Redis``, ``redis.cluster.RedisCluster`` or
        Sentinel ``master_for()`` client. It is not closed by :meth:`close`.
    :param key_prefix: prefix of every key this backend writes, scans or
        clears; give each app its own.
    """

    def __init__(
        self,
        client: redis.Redis | redis.cluster.RedisCluster,
        *,
        key_prefix: str = "serversession:",
    ) -> None:
        if not isinstance(client, (redis.Redis, redis.cluster.RedisCluster)):
            kind = f"{type(client).__module__}.{type(client).__qualname__}"
            raise TypeError(
                "RedisBackend needs a redis.Redis, redis.cluster.RedisCluster or"
                f" Sentinel master_for() client, not {kind}"
            )
        if not isinstance(key_prefix, str) or not key_prefix:
            raise ValueError(f"key_prefix must be a non-empty string, not {key_prefix!r}")
        self.client = client
        self.key_prefix = key_prefix
        self._owns_client = False
        self._update = client.register_script(_UPDATE_SCRIPT)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = "serversession:",
        **kwargs: t.Any,
    ) -> RedisBackend:
        """Build a backend on a new ``redis.Redis`` client for ``url``.

        Socket timeouts default to a few seconds and a command that hits a
        connection error is retried once; options in the URL's query string
        and ``kwargs`` override these.
        Raises ValueError for a URL that does not name a server.

        :param url: a ``redis://``, ``rediss://`` or ``unix://`` URL.
        :param key_prefix: as for the constructor.
        :param kwargs: more arguments for ``redis.Redis``.
        """
        options = parse_url(url)  # type: ignore[no-untyped-call]
        if url.startswith("unix://") and not options.get("path"):
            raise ValueError("the unix:// URL names no socket path")
        if not url.startswith("unix://"):
            if not options.get("host"):
                raise ValueError("the URL names no host")
            path = urlsplit(url).path.strip("/")
            if path and not path.isdigit():
                raise ValueError(f"database {path!r} in the URL is not a number")
        kwargs.setdefault("socket_timeout", 5.0)
        kwargs.setdefault("socket_connect_timeout", 3.0)
        kwargs.setdefault("retry", Retry(NoBackoff(), 1))
        backend = cls(redis.Redis.from_url(url, **kwargs), key_prefix=key_prefix)
        backend._owns_client = True
        return backend

    @contextlib.contextmanager
    def _errors(self, action: str) -> t.Iterator[None]:
        try:
            yield
        except (RedisError, RedisClusterException) as e:
            message = f"Redis failed to {action}: {type(e).__name__}: {e}"
            raise BackendError(message) from e

    def _scan(self) -> t.Iterator[list[t.Any]]:
        """Yield this prefix's keys in batches; on a cluster, from every primary."""
        match = _escape_glob(self.key_prefix) + "*"
        batch: list[t.Any] = []
        for name in self.client.scan_iter(match=match, count=_BATCH):
            batch.append(name)
            if len(batch) >= _BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def _each(self, names: list[t.Any], command: str, *args: t.Any) -> list[t.Any]:
        """Run ``command`` on each key in one pipelined round trip."""
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.execute_command(command, name, *args)
        return pipe.execute(raise_on_error=False)

    def load(self, key: str) -> Record | None:
        with self._errors("load a session"):
            try:
                fields = self.client.hgetall(self.key_prefix + key)
            except ResponseError as e:
                if str(e).startswith("WRONGTYPE"):
                    raise CorruptRecordError(f"the session key is not a hash: {e}") from e
                raise
        if not fields:
            return None
        return _decode(t.cast(t.Mapping[t.Any, t.Any], fields))

    def create(self, key: str, record: Record) -> None:
        name = self.key_prefix + key
        mapping: dict[t.Any, t.Any] = {_DATA + k: v for k, v in record.data.items()}
        mapping[_CREATED] = _micros(record.created_at)
        mapping[_EXPIRES] = _micros(record.expires_at)
        with self._errors("create a session"):
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(name)
            pipe.hset(name, mapping=mapping)
            pipe.pexpireat(name, _expire_at_ms(record.expires_at))
            pipe.execute()

    def update(self, key: str, delta: Delta, now: datetime) -> bool:
        args: list[str | int] = [
            _micros(now),
            _micros(delta.expires_at),
            _expire_at_ms(delta.expires_at),
            len(delta.set),
        ]
        for k, v in delta.set.items():
            args += (_DATA + k, v)
        args += (_DATA + k for k in delta.deleted)
        with self._errors("save a session"):
            return bool(self._update(keys=[self.key_prefix + key], args=args))

    def delete(self, key: str) -> None:
        with self._errors("delete a session"):
            self.client.delete(self.key_prefix + key)

    def purge_expired(self, now: datetime) -> int:
        """Do nothing and return 0: Redis removes expired sessions by itself."""
        return 0

    def count(self, now: datetime) -> int:
        live = 0
        threshold = _micros(now)
        with self._errors("count sessions"):
            for names in self._scan():
                for value in self._each(names, "HGET", _EXPIRES):
                    # A key that vanished meanwhile reads None, a non-hash an error.
                    with contextlib.suppress(TypeError, ValueError, UnicodeDecodeError):
                        if not isinstance(value, Exception) and int(_text(value)) > threshold:
                            live += 1
        return live

    def items(self, now: datetime) -> t.Iterator[tuple[str, Record]]:
        start = len(self.key_prefix)
        with self._errors("list sessions"):
            for names in self._scan():
                for name, fields in zip(names, self._each(names, "HGETALL"), strict=True):
                    key = _text(name)[start:]
                    if isinstance(fields, ResponseError) and str(fields).startswith("WRONGTYPE"):
                        logger.error("Skipping session %s: the key is not a hash.", key)
                        continue
                    if isinstance(fields, Exception):
                        raise fields
                    if not fields:
                        continue
                    try:
                        record = _decode(fields)
                    except CorruptRecordError as e:
                        logger.error("Skipping corrupt session %s: %s", key, e)
                        continue
                    if record.expires_at > now:
                        yield key, record

    def clear(self) -> int:
        removed = 0
        with self._errors("clear sessions"):
            for names in self._scan():
                # One DEL per key: a multi-key DEL fails across cluster slots.
                for result in self._each(names, "DEL"):
                    if isinstance(result, Exception):
                        raise result
                    removed += int(result)
        return removed

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
