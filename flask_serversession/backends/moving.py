from __future__ import annotations

import typing as t
from dataclasses import replace
from datetime import datetime
from datetime import timedelta
from datetime import timezone

from ..log import logger
from .base import Backend
from .base import CorruptRecordError
from .base import Delta
from .base import Record

#: Returns the user a record's stored data names, or None.
UserOf = t.Callable[[t.Mapping[str, str]], "str | None"]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class MovingBackend(Backend):
    """The current store, with sessions still in an old store moved over on first use.

    Every write goes to ``current``. A key that ``current`` does not hold is
    read from ``old``, added to ``current`` under the same key, with its
    data, created and expiry times and user (:meth:`Backend.add`: only if no
    live session is there, in one atomic step), and only then taken from
    ``old``. So at every moment one store or the other holds the session:
    no request ever waits for a move under way elsewhere. A lookup that
    misses ``current`` and then ``old`` reads ``current`` once more, which
    finds a session that another process added in between. Of processes
    moving one session at the same moment, one wins the add; a sign-out
    that lands during the move ends the session in ``old``, so the winner's
    take finds nothing and it removes what it added. Keys that ``current``
    holds cost nothing more.

    :param current: where sessions live from now on; it must implement
        :meth:`Backend.add`.
    :param old: where they lived before (``SERVERSESSION_MIGRATE_FROM``).
    :param user_of: returns the user a record's data names, for records the
        old store kept without one, and for listing a user's sessions in the
        old store (read whole: it may keep no user index).

    .. versionadded:: 0.3
    """

    #: Returns the current time; the liveness of what is moved is judged by it.
    clock: t.Callable[[], datetime] = staticmethod(_utcnow)

    def __init__(self, current: Backend, old: Backend, *, user_of: UserOf | None = None) -> None:
        self.current = current
        self.old = old
        self.user_of = user_of

    @property
    def wrapped(self) -> Backend:
        """The store sessions live in from now on (see :func:`~.base.innermost`)."""
        return self.current

    @property
    def user_index(self) -> bool:
        """Whether the current store keeps the user index (see ``require_index``)."""
        return bool(getattr(self.current, "user_index", True))

    def move(self, key: str, now: datetime) -> bool:
        """Move the live session under ``key`` from the old store; whether this call did.

        False when the old store has no live session under ``key``, or
        another process moved it first. Nothing is taken from the old store
        before the current one holds the session, so a store that fails
        midway loses nothing.

        :raises BackendError: a store failed.
        """
        try:
            record = self.old.load(key)
        except CorruptRecordError as e:
            logger.error("Session %s of the old store cannot be read, not moving it: %s", key, e)
            return False
        if record is None or record.expires_at <= now:
            return False
        if record.user is None and self.user_of is not None:
            record = replace(record, user=self.user_of(record.data))
        if not self.current.add(key, record, now):
            return False  # another process moved it first
        if self.old.take(key, now) is None:
            # Ended in the old store since it was read (a sign-out, a
            # revocation, a purge): what was added must not outlive it.
            self.current.delete(key)
            return False
        return True

    def old_keys(self, now: datetime) -> list[str]:
        """The keys of the sessions live in the old store at ``now``."""
        return [key for key, _record in self.old.items(now)]

    # The Backend interface.

    # Each lookup reads the current store, then the old one (through move),
    # then the current one again: a move by another process adds the
    # session to the current store before it takes it from the old one.

    def load(self, key: str) -> Record | None:
        record = self.current.load(key)
        if record is None:
            self.move(key, self.clock())
            record = self.current.load(key)
        return record

    def create(self, key: str, record: Record) -> None:
        self.current.create(key, record)

    def add(self, key: str, record: Record, now: datetime) -> bool:
        self.move(key, now)
        return self.current.add(key, record, now)

    def update(self, key: str, delta: Delta, now: datetime) -> bool:
        if self.current.update(key, delta, now):
            return True
        self.move(key, now)
        return self.current.update(key, delta, now)

    def touch(self, key: str, expires_at: datetime, now: datetime) -> bool:
        if self.current.touch(key, expires_at, now):
            return True
        self.move(key, now)
        return self.current.touch(key, expires_at, now)

    def rewrite(self, key: str, expected: Record, delta: Delta, now: datetime) -> bool:
        if self.current.rewrite(key, expected, delta, now):
            return True
        self.move(key, now)
        return self.current.rewrite(key, expected, delta, now)

    def take(self, key: str, now: datetime) -> Record | None:
        record = self.current.take(key, now)
        if record is None:
            # Taken from the old store between another process's add and
            # its take, the session is removed from the current one by it.
            record = self.old.take(key, now)
        if record is None:
            record = self.current.take(key, now)
        return record

    def delete(self, key: str) -> None:
        # The old store first: a move under way then lands before the second delete.
        self.old.delete(key)
        self.current.delete(key)

    def purge_expired(self, now: datetime, *, longest_lifetime: timedelta | None = None) -> int:
        removed = self.old.purge_expired(now, longest_lifetime=longest_lifetime)
        return removed + self.current.purge_expired(now, longest_lifetime=longest_lifetime)

    def count(self, now: datetime) -> int:
        return self.old.count(now) + self.current.count(now)

    def items(self, now: datetime) -> t.Iterator[tuple[str, Record]]:
        # The old store first: a session moved meanwhile is then met in the
        # current one, and one met in both is listed once.
        seen: set[str] = set()
        for key, record in self.old.items(now):
            seen.add(key)
            yield key, record
        for key, record in self.current.items(now):
            if key not in seen:
                yield key, record

    def clear(self) -> int:
        return self.old.clear() + self.current.clear()

    def user_records(self, user: str, now: datetime) -> list[tuple[str, Record]]:
        found = dict(self.current.user_records(user, now))
        if self.user_of is not None:
            for key, record in self.old.items(now):
                owner = record.user if record.user is not None else self.user_of(record.data)
                if owner == user and key not in found:
                    found[key] = replace(record, user=owner)
        return list(found.items())

    def close(self) -> None:
        try:
            self.old.close()
        finally:
            self.current.close()
