"""The Redis backend's user index: one set of storage keys per user.

A session with a user (``Record.user``) has ``user`` and ``indexed_us``
fields and is a member of its user's set, at ``key_prefix + "user:" +
sha256(user)``, for ``user_records``. A save that keeps the user leaves the
set alone, unless it renews the session past the time the set is sure to
live (about once a day of use): then it pushes the set's TTL forward first.
On a single server, giving a session a user is the same one script; taking
it away, or taking the session, costs one more round trip to leave the old
user's set. On a cluster the set and the hash live in different slots:
giving a user costs two more round trips, taking one away two.
"""

from __future__ import annotations

import hashlib
import json
import typing as t
from datetime import datetime

from ...log import logger
from ..base import CorruptRecordError
from ..base import Record
from . import scripts
from .codec import parse
from .codec import RAW
from .codec import text
from .codec import USERS
from .codec import wrong_type

if t.TYPE_CHECKING:
    from .clients import Client

# Hashes read per round trip when listing.
_BATCH = 1000
# Buckets an SSCAN call visits: one call reads a set of a few thousand.
_SCAN_COUNT = 10_000
_MAX_BATCHES = 100_000


class Host(t.Protocol):
    """What the index uses of the backend it serves: its client, prefix and round trips."""

    client: Client
    key_prefix: str
    errors: tuple[type[Exception], ...]
    _cluster: bool

    def _run(self, script: str, keys: t.Sequence[t.Any], *args: t.Any) -> t.Any: ...

    def _each(self, names: list[t.Any], command: str, *args: t.Any) -> list[t.Any]: ...


class UserIndex:
    """The sets that list each user's sessions, for :meth:`RedisBackend.user_records`.

    The set of a user is at ``<prefix>user:<sha256 of the user>`` and holds
    the storage keys of the user's sessions. It may hold more (sessions
    deleted, expired or passed to another user since): listing reads every
    member's hash and removes those that are not the user's live sessions.
    It never holds less. A session is added to its user's set before, or in
    the same script as, the write that gives it that user; a set's TTL only
    grows and always outlives its sessions (``indexed_us``). On a cluster,
    where the set and the hash are in different slots, the writer adds the
    session again after its write, and a removal of a member whose session
    may have changed hands back reads the hash after the removal and adds
    the member back if the hash names the user again. Between them, no
    interleaving of writers and cleaners leaves a session out of its set.

    :param backend: the backend whose client and prefix it uses.
    """

    def __init__(self, backend: Host) -> None:
        self.backend = backend

    def name(self, user: str) -> str:
        """The key of ``user``'s set; it never holds the user in clear."""
        digest = hashlib.sha256(user.encode()).hexdigest()
        return f"{self.backend.key_prefix}{USERS}{digest}"

    def _hash(self, member: bytes) -> bytes:
        return self.backend.key_prefix.encode() + member

    def add(self, user: str, key: str, deadline_ms: int) -> None:
        """Add ``key`` to ``user``'s set and keep the set until ``deadline_ms`` at least."""
        self.backend._run(scripts.INDEX, [self.name(user)], key, deadline_ms)

    def confirm(self, user: str, key: str, deadline_ms: int) -> None:
        """On a cluster, add ``key`` again after the write that gave it ``user``.

        A listing that read the hash before that write may have removed the
        member added before it. The write itself succeeded, so a failure here
        is logged, not raised: it matters only if such a listing ran then.
        """
        if self.backend._cluster:
            self._quietly("index a session", lambda: self.add(user, key, deadline_ms))

    def forget(self, user: str, key: str, *, moved: bool) -> None:
        """Remove ``key`` from ``user``'s set after it lost that user or was taken.

        With ``moved`` the session still exists, so the removal is guarded as
        in :meth:`records`. A failure leaves a stale member, which listing
        removes, so it is logged, not raised.
        """
        member = key.encode()
        if moved:
            self._quietly("update a user index", lambda: self._clean(user, [member], []))
        else:
            self._quietly(
                "update a user index",
                lambda: self.backend.client.execute_command(  # type: ignore[no-untyped-call]
                    "SREM", self.name(user), member
                ),
            )

    def records(self, user: str, now: datetime) -> list[tuple[str, Record]]:
        """Return the live records of ``user`` and remove the set's stale members."""
        members = self._members(self.name(user))
        found: list[tuple[str, Record]] = []
        moved: list[bytes] = []
        dead: list[bytes] = []
        for start in range(0, len(members), _BATCH):
            batch = members[start : start + _BATCH]
            for member, fields in zip(batch, self._read(batch), strict=True):
                verdict = self._verdict(member, fields, user, now)
                if isinstance(verdict, tuple):
                    found.append(verdict)
                else:
                    (moved if verdict else dead).append(member)
        if moved or dead:
            found += self._clean(user, moved, dead, now)
        return found

    def _read(self, members: list[bytes]) -> list[t.Mapping[t.Any, t.Any] | Exception | None]:
        """Read the hashes of ``members`` in one round trip.

        Gives each one's fields, None for no key, or the
        :class:`CorruptRecordError` of a key that is not a hash.
        """
        names = [self._hash(m) for m in members]
        if self.backend._cluster:
            replies = self.backend._each(names, "HGETALL")
        else:
            replies = self.backend._run(scripts.READ, names)
        found: list[t.Mapping[t.Any, t.Any] | Exception | None] = []
        for reply in replies:
            if wrong_type(reply):
                found.append(CorruptRecordError("the key is not a hash"))
            elif isinstance(reply, Exception):
                raise reply
            elif isinstance(reply, dict):
                found.append(reply or None)
            elif not reply:
                found.append(None)
            elif not reply.startswith(b"["):
                found.append(CorruptRecordError(f"the key is a Redis {text(reply)}, not a hash"))
            else:
                try:
                    # Strict UTF-8, as parse decodes: cjson passes bytes through.
                    fields = json.loads(reply.decode())
                except ValueError as e:
                    found.append(CorruptRecordError(f"bad session hash: {e!r}"))
                else:
                    found.append(dict(zip(fields[::2], fields[1::2], strict=True)))
        return found

    def _verdict(
        self,
        member: bytes,
        fields: t.Mapping[t.Any, t.Any] | Exception | None,
        user: str,
        now: datetime,
    ) -> tuple[str, Record] | bool:
        """``(key, record)`` of a live session of ``user``; else whether the
        member's session may still come back to ``user`` (absent, or another
        user's: it may change hands again) or not (expired or damaged)."""
        if fields is None:
            return True
        try:
            if isinstance(fields, Exception):
                raise fields
            key = member.decode()
            record, _indexed = parse(fields)
        except (UnicodeDecodeError, CorruptRecordError) as e:
            name = member.decode(errors="replace")
            logger.error("Removed damaged session %s from its user's index: %s", name, e)
            return False
        if record.user != user:
            return True
        if record.expires_at <= now:
            return False
        return key, record

    def _members(self, name: str) -> list[bytes]:
        members: dict[bytes, None] = {}
        cursor: t.Any = 0
        for _ in range(_MAX_BATCHES):
            try:
                cursor, batch = self.backend.client.execute_command(  # type: ignore[no-untyped-call]
                    "SSCAN", name, cursor, "COUNT", _SCAN_COUNT, **RAW
                )
            except self.backend.errors as e:
                if not wrong_type(e):
                    raise
                logger.error("The user index %s is not a set; no session is listed.", name)
                return []
            members.update(dict.fromkeys(batch))
            if int(cursor) == 0:
                break
        return list(members)

    def _clean(
        self,
        user: str,
        moved: list[bytes],
        dead: list[bytes],
        now: datetime | None = None,
    ) -> list[tuple[str, Record]]:
        """Remove members from ``user``'s set.

        ``dead`` members go whatever their hash holds now. ``moved`` ones stay
        when their hash names ``user`` again: decided in one script on a
        plain server; on a cluster, read back after the removal and added
        again; those live at ``now`` are returned, to be listed.
        """
        name = self.name(user)
        if not self.backend._cluster:
            keys = [name, *(self._hash(m) for m in moved)]
            self.backend._run(scripts.UNINDEX, keys, user, *moved, *dead)
            return []
        self.backend.client.execute_command("SREM", name, *moved, *dead)  # type: ignore[no-untyped-call]
        back: list[tuple[str, Record]] = []
        for member, fields in zip(moved, self._read(moved) if moved else [], strict=True):
            if fields is None or isinstance(fields, Exception):
                continue
            try:
                record, indexed = parse(fields)
            except CorruptRecordError:
                continue
            if record.user != user or indexed is None:
                continue
            key = member.decode()
            self.add(user, key, -(-indexed // 1000))
            if now is not None and record.expires_at > now:
                back.append((key, record))
        return back

    def _quietly(self, action: str, call: t.Callable[[], object]) -> None:
        try:
            call()
        except self.backend.errors as e:
            logger.warning("Redis failed to %s: %s: %s", action, type(e).__name__, e)
