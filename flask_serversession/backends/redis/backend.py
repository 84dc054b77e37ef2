from __future__ import annotations

import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

from ...log import logger
from ..base import Backend
from ..base import check_size
from ..base import CorruptRecordError
from ..base import Delta
from ..base import Record
from . import prefix
from . import scripts
from .clients import client_from_url
from .clients import client_library
from .codec import create_numbers
from .codec import DATA
from .codec import decode
from .codec import fields_of
from .codec import index_deadline_from_us
from .codec import index_deadline_ms
from .codec import INDEXED
from .codec import micros
from .codec import packed
from .codec import parse
from .codec import RAW
from .codec import text
from .codec import update_numbers
from .codec import USER
from .codec import wrong_type
from .failures import Failures
from .held import HeldConnections
from .held import holds_connections
from .users import UserIndex

if t.TYPE_CHECKING:
    from .clients import Client

_MILLISECOND = timedelta(milliseconds=1)
_BATCH = 500
_ATTEMPTS = 4  # saves retried after moving a user's set TTL forward


class RedisBackend(Backend):
    """Keep each session in a Redis hash that Redis expires by itself.

    The hash at ``key_prefix + key`` holds one ``d:<name>`` field per session
    key plus ``created_us`` and ``expires_us`` (microseconds since the epoch);
    ``PEXPIREAT`` removes it ``keep_expired`` after it expires, so
    :meth:`purge_expired` only has keys without a TTL to deal with. Loads,
    saves and :meth:`take` each take one round trip; a write is a ``MULTI``
    block or a Lua script, so a failed save never leaves a half-written hash,
    and the size limit holds for concurrent saves. Works with a plain client, a
    cluster client and a Sentinel ``master_for()`` client, of redis-py or of
    valkey-py, on Redis or Valkey; no server is contacted until first use.

    A session with a user is also in its user's set (see ``redis/users.py``).

    :param client: a ready ``redis.Redis``, ``redis.cluster.RedisCluster``,
        ``valkey.Valkey``, ``valkey.cluster.ValkeyCluster`` or Sentinel
        ``master_for()`` client. It is not closed by :meth:`close`.
    :param key_prefix: prefix of every key this backend writes, scans or
        clears; give each app its own.
    :param keep_expired: how long Redis keeps a session's hash after it
        expires. A request that brings its token meanwhile meets the expired
        record and ``session_expired`` is sent, as on other backends. An hour
        covers a user who comes back to a session that timed out; it costs
        the memory of the sessions that expired in the last hour.

    .. versionchanged:: 0.3
        ``keep_expired``: hashes outlive their expiry by an hour; valkey-py
        clients, and ``valkey://`` and ``valkeys://`` URLs.
    """

    def __init__(
        self,
        client: Client,
        *,
        key_prefix: str = "serversession:",
        keep_expired: timedelta = timedelta(hours=1),
    ) -> None:
        lib = client_library(client)
        if not isinstance(key_prefix, str) or not key_prefix:
            raise ValueError(f"key_prefix must be a non-empty string, not {key_prefix!r}")
        if not isinstance(keep_expired, timedelta) or keep_expired < timedelta(0):
            raise ValueError(f"keep_expired must be a timedelta of 0 or more, not {keep_expired!r}")
        self.client = client
        self.key_prefix = key_prefix
        self.keep_expired = keep_expired
        self._owns_client = False
        #: Every error the client raises for a failed command.
        self.errors = lib.errors
        self._library = lib
        self._users = UserIndex(self)
        self._cluster = isinstance(client, lib.cluster)
        #: Runs a command, undecoded: on a connection held per thread where the client allows.
        self._execute: t.Callable[..., t.Any] = self._pooled
        if holds_connections(client):
            self._execute = HeldConnections(client, self._pooled).execute

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        key_prefix: str = "serversession:",
        keep_expired: timedelta = timedelta(hours=1),
        **kwargs: t.Any,
    ) -> RedisBackend:
        """Build a backend on a new single-server client for ``url``.

        The client is a ``valkey.Valkey`` for a ``valkey://`` or ``valkeys://``
        URL, otherwise a ``redis.Redis``, made by ``clients.client_from_url``
        (its defaults give way to the URL's query string and ``kwargs``).

        :param url: a ``redis://``, ``rediss://``, ``valkey://``,
            ``valkeys://`` or ``unix://`` URL.
        :param kwargs: more arguments for the client.
        """
        client = client_from_url(url, **kwargs)
        backend = cls(client, key_prefix=key_prefix, keep_expired=keep_expired)
        backend._owns_client = True
        return backend

    def _pooled(self, *args: t.Any) -> t.Any:
        """Run a command through the client, which takes a connection from its pool for it."""
        return self.client.execute_command(*args, **RAW)  # type: ignore[no-untyped-call]

    def _errors(self, action: str) -> Failures:
        """A context in which a Redis error becomes a BackendError that says what failed."""
        return Failures(action, self.errors)

    def _pipelined(self, commands: t.Iterable[tuple[t.Any, ...]]) -> list[t.Any]:
        """Run ``commands`` in one round trip; a failed one gives its exception."""
        pipe = self.client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command, **RAW)
        return pipe.execute(raise_on_error=False)

    def _each(self, names: list[t.Any], command: str, *args: t.Any) -> list[t.Any]:
        """Run ``command`` on each key in one pipelined round trip."""
        return self._pipelined((command, name, *args) for name in names)

    def _run(self, script: str, keys: t.Sequence[t.Any], *args: t.Any) -> t.Any:
        """Run ``script`` on ``keys`` (full names) by its SHA1: one round trip.

        Only a server that does not know the script yet (restarted, flushed,
        a new cluster node) costs one more, which runs it with ``EVAL`` and so
        loads it: on the node of ``keys`` alone, since a ``SCRIPT LOAD`` on a
        cluster goes to every primary and fails while any one of them is down.
        """
        try:
            return self._execute("EVALSHA", scripts.sha(script), len(keys), *keys, *args)
        except self._library.no_script_error:
            return self._execute("EVAL", script, len(keys), *keys, *args)

    def load(self, key: str) -> Record | None:
        with self._errors("load a session"):
            try:
                name = self.key_prefix + key
                fields = self._execute("HGETALL", name)
            except self._library.response_error as e:
                if wrong_type(e):
                    raise CorruptRecordError(f"the session key is not a hash: {e}") from e
                raise
        if not fields:
            return None
        return parse(fields_of(fields))[0]

    def create(self, key: str, record: Record) -> None:
        self._store(key, record, None)

    def add(self, key: str, record: Record, now: datetime) -> bool:
        return self._store(key, record, now)

    def _store(self, key: str, record: Record, now: datetime | None) -> bool:
        """Write ``record`` in one script; with ``now``, only if no session live then is there."""
        mapping: dict[t.Any, t.Any] = {DATA + k: v for k, v in record.data.items()}
        keys, user, deadline = [self.key_prefix + key], record.user, 0
        with self._errors("create a session"):
            if user is not None:
                deadline = index_deadline_ms(record.expires_at, datetime.now(timezone.utc))
                mapping[USER] = user
                mapping[INDEXED] = deadline * 1000
                if self._cluster:
                    # The set may live on another node: index first, then create.
                    self._users.add(user, key, deadline)
                else:
                    keys.append(self._users.name(user))
            pairs = [part for item in mapping.items() for part in item]
            numbers = create_numbers(record, self.keep_expired, deadline, now)
            script = scripts.CREATE if now is None else scripts.ADD
            stored = bool(self._run(script, keys, numbers, packed([key, *pairs])))
        if user is not None and stored:
            self._users.confirm(user, key, deadline)
        elif user is not None and self._cluster:
            self._users.forget(user, key, moved=True)  # kept if the session there is the user's
        return stored

    def update(self, key: str, delta: Delta, now: datetime) -> bool:
        """Apply ``delta`` in one script, and move the session between users' sets.

        A save that keeps the user is that one script. One that would renew
        the session past the TTL its user's set is sure to have (once a day
        or so of use) pushes the set's TTL forward first, then runs again.
        """
        return self._update(key, delta, now, scripts.UPDATE)

    def rewrite(self, key: str, expected: Record, delta: Delta, now: datetime) -> bool:
        """:meth:`update`'s script, which first checks the hash against ``expected``."""
        fields = [v for k, text in expected.data.items() for v in (DATA + k, text)]
        guard = packed([str(micros(expected.expires_at)), *fields])
        return self._update(key, delta, now, scripts.REWRITE, guard)

    def _update(self, key: str, delta: Delta, now: datetime, script: str, *guard: str) -> bool:
        op, user = "keep", ""
        if delta.user_changed:
            op, user = ("clear", "") if delta.user is None else ("set", delta.user)
        now_us, expires_us = micros(now), micros(delta.expires_at)
        deadline = index_deadline_from_us(expires_us, now_us)
        changes: list[str] = []
        for k, v in delta.set.items():
            changes += (DATA + k, v)
        changes += (DATA + k for k in delta.deleted)
        head = update_numbers(now_us, expires_us, delta, self.keep_expired, deadline)
        # The compare-and-set's field and value; empty ones when only a guard follows.
        expect: tuple[str, ...] = ("", "") if guard else ()
        if delta.expect is not None:
            name, value = delta.expect
            expect = (DATA + name, "-" if value is None else "=" + value)
        with self._errors("save a session"):
            for _ in range(_ATTEMPTS):
                keys = [self.key_prefix + key]
                if op in ("set", "reindex"):
                    if self._cluster:
                        self._users.add(user, key, deadline)
                    else:
                        keys.append(self._users.name(user))
                parts = packed([op, user, key, *changes])
                result = self._run(script, keys, head, parts, *expect, *guard)
                if type(result) is int or int(result[0]) != 2:
                    break
                op, user = "reindex", text(result[1])
            else:
                raise self.errors[0]("the session changed hands during every attempt to save it")
        if type(result) is int:  # 1: the common case, see scripts.UPDATE
            result = [result]
        code = int(result[0])
        if code < 0:
            check_size(int(result[1]), int(result[2]), delta.max_size)
        if code == 1 and op == "set":
            self._users.confirm(user, key, deadline)
        if code == 1 and len(result) > 1:
            self._users.forget(text(result[1]), key, moved=True)
        return code == 1

    def take(self, key: str, now: datetime) -> Record | None:
        """Remove the session hash and return its record if it was live.

        One script reads and deletes the key, whatever it holds; a key that
        is not a session hash is logged and gives None.
        """
        with self._errors("take a session"):
            result = self._run(scripts.TAKE, [self.key_prefix + key])
        if result is None:
            return None
        kind, fields = text(result[0]), result[1]
        if kind != "hash":
            logger.error("Removed session %s: the key held a Redis %s, not a hash.", key, kind)
            return None
        try:
            record = decode(dict(zip(fields[::2], fields[1::2], strict=True)))
        except CorruptRecordError as e:
            logger.error("Removed corrupt session %s: %s", key, e)
            return None
        if record.user is not None:
            self._users.forget(record.user, key, moved=False)
        return record if record.expires_at > now else None

    def delete(self, key: str) -> None:
        with self._errors("delete a session"):
            self._execute("DEL", self.key_prefix + key)

    def purge_expired(self, now: datetime, *, longest_lifetime: timedelta | None = None) -> int:
        """Give keys of this prefix that have no TTL one of ``longest_lifetime``; return 0.

        Redis removes each session by itself, so nothing is counted. A key
        without a TTL is damaged or was written by other code, and would
        stay forever: it gets one of ``longest_lifetime`` (an error is
        logged). Keys with a TTL are not touched; with ``longest_lifetime``
        None nothing is done. The prefix is scanned in batches of 500 keys,
        one round trip each, on every cluster primary.
        """
        if longest_lifetime is None:
            return 0
        ttl_ms = max(1, -(-longest_lifetime // _MILLISECOND))
        with self._errors("purge sessions"):
            limited = prefix.limit_ttls(self, ttl_ms)
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
        with self._errors("count sessions"):
            return prefix.count_live(self, now)

    def items(self, now: datetime) -> t.Iterator[tuple[str, Record]]:
        with self._errors("list sessions"):
            yield from prefix.live_records(self, now)

    def clear(self) -> int:
        """Remove every key of this prefix, users' sets too; return how many sessions."""
        with self._errors("clear sessions"):
            return prefix.remove_all(self)

    def user_records(self, user: str, now: datetime) -> list[tuple[str, Record]]:
        """Return ``(key, record)`` for every live session of ``user``.

        Reads the user's set (``SSCAN``, one round trip per 1,000 members)
        and every member's hash (one pipelined round trip per 1,000), and
        lists only hashes that name ``user`` and are live at ``now``. Members
        whose session is gone, expired, damaged or another user's are removed
        from the set, in one more round trip (a few on a cluster).

        .. versionadded:: 0.2
        """
        with self._errors("list a user's sessions"):
            return self._users.records(user, now)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
