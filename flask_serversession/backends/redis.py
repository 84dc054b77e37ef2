from __future__ import annotations

import contextlib
import hashlib
import re
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from urllib.parse import urlsplit

import redis
import redis.cluster
from redis.backoff import NoBackoff
from redis.client import NEVER_DECODE
from redis.connection import parse_url
from redis.exceptions import NoScriptError
from redis.exceptions import RedisClusterException
from redis.exceptions import RedisError
from redis.exceptions import ResponseError
from redis.retry import Retry

from ..errors import BackendError
from .base import Backend
from .base import check_size
from .base import CorruptRecordError
from .base import Delta
from .base import logger
from .base import Record

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_MILLISECOND = timedelta(milliseconds=1)
_DATA = "d:"
_CREATED = "created_us"
_EXPIRES = "expires_us"
_BATCH = 500
# Times are whole microseconds since the epoch, at most 17 digits (year 3138),
# so the update script and _decode agree on what a valid number is.
_WHOLE_NUMBER = re.compile(rb"[0-9]{1,17}")
# Replies are read as bytes even from a client built with decode_responses,
# so damaged bytes reach _decode instead of failing inside the client.
_RAW: dict[str, t.Any] = {NEVER_DECODE: True}

# Applies a delta to a live session in one atomic step and returns {1}, or
# returns {0} and writes nothing when the hash is gone (destroyed,
# regenerated, expired), its stored expiry has passed by the app's clock, or
# it is not laid out as a session. With a size limit and keys to set it also
# returns {-1, before, after}, writing nothing, when the merged data would
# pass the limit and grow (the rule of check_size); sizes count the bytes of
# each name without "d:" plus its value, as data_size does. Redis refuses a
# script (READONLY, OOM) only at its first write and the checks come first,
# so it never stops half-way. ARGV: now_us, expires_us, expire_at_ms,
# max_size (-1: none), n_set, n_set field/value pairs, then fields to delete.
_UPDATE_SCRIPT = """
local key = KEYS[1]
if redis.call('TYPE', key).ok ~= 'hash' then return {0} end
local function whole(v) return v and #v <= 17 and string.match(v, '^%d+$') and tonumber(v) end
local meta = redis.call('HMGET', key, 'created_us', 'expires_us')
local stored = whole(meta[2])
if not whole(meta[1]) or not stored or stored <= tonumber(ARGV[1]) then return {0} end
local limit = tonumber(ARGV[4])
local last = 5 + 2 * tonumber(ARGV[5])
local check = limit >= 0 and last > 5
local sizes = {}
for _, f in ipairs(redis.call('HKEYS', key)) do
  if string.sub(f, 1, 2) == 'd:' then
    if check then sizes[f] = #f - 2 + redis.call('HSTRLEN', key, f) end
  elseif f ~= 'created_us' and f ~= 'expires_us' then
    return {0}
  end
end
if check then
  local before, after = 0, 0
  for _, n in pairs(sizes) do before = before + n end
  for i = last + 1, #ARGV do sizes[ARGV[i]] = nil end
  for i = 6, last, 2 do sizes[ARGV[i]] = #ARGV[i] - 2 + #ARGV[i + 1] end
  for _, n in pairs(sizes) do after = after + n end
  if after > limit and after > before then return {-1, before, after} end
end
for i = last + 1, #ARGV do redis.call('HDEL', key, ARGV[i]) end
for i = 6, last, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
redis.call('HSET', key, 'expires_us', ARGV[2])
redis.call('PEXPIREAT', key, ARGV[3])
return {1}
"""

# Removes the key and returns {type, fields}: the fields (flat name/value
# list) of a hash, none for another type; returns nil when there is no key.
_TAKE_SCRIPT = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return false end
local fields = {}
if kind == 'hash' then fields = redis.call('HGETALL', KEYS[1]) end
redis.call('DEL', KEYS[1])
return {kind, fields}
"""

# Gives a key without a TTL the one in ARGV[1] (ms); 1 if it did, else 0.
# Plain PTTL + PEXPIRE works on servers older than PEXPIRE ... NX (7.0).
_LIMIT_SCRIPT = """
if redis.call('PTTL', KEYS[1]) ~= -1 then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[1])
"""


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


def _expire_at_ms(value: datetime) -> int:
    # Round up, so Redis never drops a session before its ``expires_at``.
    return -(-_micros(value) // 1000)


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _whole(value: bytes | str) -> int:
    raw = value.encode() if isinstance(value, str) else value
    if not _WHOLE_NUMBER.fullmatch(raw):
        raise ValueError(f"{raw!r} is not a whole number")
    return int(raw)


def _escape_glob(value: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in value)


def _decode(fields: t.Mapping[t.Any, t.Any]) -> Record:
    """Build a record from the fields of a session hash."""
    try:
        decoded = {_text(k): _text(v) for k, v in fields.items()}
        created_at = _EPOCH + _whole(decoded.pop(_CREATED)) * _MICROSECOND
        expires_at = _EPOCH + _whole(decoded.pop(_EXPIRES)) * _MICROSECOND
    except (KeyError, ValueError, OverflowError) as e:
        # UnicodeDecodeError is a ValueError: bytes that are not UTF-8.
        raise CorruptRecordError(f"bad session hash: {e!r}") from e
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
    ``PEXPIREAT`` removes it when it expires, so :meth:`purge_expired` only
    has keys without a TTL to deal with. Loads, saves and :meth:`take` each
    take one round trip: a write is a ``MULTI`` block or a Lua script, so a
    failed save never leaves a half-written hash, and the size limit holds
    for concurrent saves. Works with a plain client, a ``RedisCluster`` and a
    Sentinel ``master_for()`` client; no server is contacted until first use.

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
        for name in self.client.scan_iter(match=match, count=_BATCH, **_RAW):
            batch.append(name)
            if len(batch) >= _BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def _pipelined(self, commands: t.Iterable[tuple[t.Any, ...]]) -> list[t.Any]:
        """Run ``commands`` in one round trip; a failed one gives its exception."""
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command, **_RAW)
        return pipe.execute(raise_on_error=False)

    def _each(self, names: list[t.Any], command: str, *args: t.Any) -> list[t.Any]:
        """Run ``command`` on each key in one pipelined round trip."""
        return self._pipelined((command, name, *args) for name in names)

    def _eval(self, script: str, key: str, *args: t.Any) -> t.Any:
        """Run ``script`` on the session hash of ``key`` by its SHA1: one round trip.

        Only a server that does not know the script yet (restarted, flushed,
        a new cluster node) costs two more, to load it and run it again.
        """
        sha = hashlib.sha1(script.encode()).hexdigest()
        command = ("EVALSHA", sha, 1, self.key_prefix + key, *args)
        try:
            return self.client.execute_command(*command, **_RAW)  # type: ignore[no-untyped-call]
        except NoScriptError:
            self.client.script_load(script)
            return self.client.execute_command(*command, **_RAW)  # type: ignore[no-untyped-call]

    def load(self, key: str) -> Record | None:
        with self._errors("load a session"):
            try:
                name = self.key_prefix + key
                fields = self.client.execute_command("HGETALL", name, **_RAW)  # type: ignore[no-untyped-call]
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
            -1 if delta.max_size is None else delta.max_size,
            len(delta.set),
        ]
        for k, v in delta.set.items():
            args += (_DATA + k, v)
        args += (_DATA + k for k in delta.deleted)
        with self._errors("save a session"):
            result = self._eval(_UPDATE_SCRIPT, key, *args)
        if int(result[0]) < 0:
            check_size(int(result[1]), int(result[2]), delta.max_size)
        return int(result[0]) == 1

    def take(self, key: str, now: datetime) -> Record | None:
        """Remove the session hash and return its record if it was live.

        One script reads and deletes the key, whatever it holds; a key that
        is not a session hash is logged and gives None.
        """
        with self._errors("take a session"):
            result = self._eval(_TAKE_SCRIPT, key)
        if result is None:
            return None
        kind, fields = _text(result[0]), result[1]
        if kind != "hash":
            logger.error("Removed session %s: the key held a Redis %s, not a hash.", key, kind)
            return None
        try:
            record = _decode(dict(zip(fields[::2], fields[1::2], strict=True)))
        except CorruptRecordError as e:
            logger.error("Removed corrupt session %s: %s", key, e)
            return None
        return record if record.expires_at > now else None

    def delete(self, key: str) -> None:
        with self._errors("delete a session"):
            self.client.delete(self.key_prefix + key)

    def purge_expired(self, now: datetime, *, longest_lifetime: timedelta | None = None) -> int:
        """Give keys of this prefix that have no TTL one of ``longest_lifetime``; return 0.

        Redis removes each session at its expiry by itself, so nothing is
        left to delete and nothing is counted. Every write of this backend
        sets a TTL, so a key without one is damaged or was written by other
        code, and would stay forever: it gets a TTL of ``longest_lifetime``
        (an error is logged), after which no session could still be live in
        it. Keys that have a TTL, valid sessions among them, are not touched;
        with ``longest_lifetime`` None nothing is done. The prefix is scanned
        in batches of 500 keys, one round trip each, on every cluster primary.
        """
        if longest_lifetime is None:
            return 0
        ttl_ms = max(1, -(-longest_lifetime // _MILLISECOND))
        limited = 0
        with self._errors("purge sessions"):
            for names in self._scan():
                ttls = self._each(names, "PTTL")
                lasting = [n for n, ttl in zip(names, ttls, strict=True) if ttl == -1]
                for result in self._pipelined(
                    ("EVAL", _LIMIT_SCRIPT, 1, n, ttl_ms) for n in lasting
                ):
                    if isinstance(result, Exception):
                        raise result
                    limited += int(result)
        if limited:
            logger.error(
                "%d keys under %r had no TTL (damaged, or not written by this backend);"
                " Redis removes them in %s.",
                limited,
                self.key_prefix,
                longest_lifetime,
            )
        return 0

    def count(self, now: datetime) -> int:
        live = 0
        threshold = _micros(now)
        with self._errors("count sessions"):
            for names in self._scan():
                for value in self._each(names, "HGET", _EXPIRES):
                    # A key that vanished meanwhile reads None, a non-hash an error.
                    with contextlib.suppress(TypeError, ValueError):
                        if not isinstance(value, Exception) and _whole(value) > threshold:
                            live += 1
        return live

    def items(self, now: datetime) -> t.Iterator[tuple[str, Record]]:
        start = len(self.key_prefix.encode())
        with self._errors("list sessions"):
            for names in self._scan():
                for name, fields in zip(names, self._each(names, "HGETALL"), strict=True):
                    try:
                        key = name[start:].decode()
                    except UnicodeDecodeError:
                        logger.error("Skipping key %r: its name is not UTF-8.", name)
                        continue
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
