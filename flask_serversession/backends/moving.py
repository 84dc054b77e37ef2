from __future__ import annotations

import time
import typing as t
from dataclasses import replace
from datetime import datetime
from datetime import timedelta
from datetime import timezone

from ..errors import BackendError
from ..log import logger
from .base import Backend
from .base import Delta
from .base import Record

#: Returns the user a record's stored data names, or None.
UserOf = t.Callable[[t.Mapping[str, str]], "str | None"]


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class MovingBackend(Backend):
    """The current store, with sessions still in an old store moved over on first use.

    Every write goes to ``current``. A key that ``current`` does not hold is
    taken from ``old`` (:meth:`Backend.take`, one atomic step, so a session
    is moved once however many requests ask for it at the same moment) and
    created in ``current`` under the same key, with its data, created and
    expiry times and user. Keys that ``current`` holds cost nothing more.

    A key missing from both stores may be one that another process has just
    taken and not yet created: such a lookup waits for it, up to
    :attr:`settle_time`, rather than start the user on a new session.

    :param current: where sessions live from now on.
    :param old: where they lived before (``SERVERSESSION_MIGRATE_FROM``).
    :param user_of: returns the user a record's data names, for records the
        old store kept without one, and for listing a user's sessions in the
        old store (read whole: it may keep no user index).

    .. versionadded:: 0.3
    """

    #: Seconds a lookup waits for a session another process is moving.
    settle_time = 1.0
    #: Returns the current time; the liveness of what is taken is judged by it.
    clock: t.Callable[[], datetime] = staticmethod(_utcnow)

    def __init__(self, current: Backend, old: Backend, *, user_of: UserOf | None = None) -> None:
        self.current = current
        self.old = old
        self.user_of = user_of

    @property
    def user_index(self) -> bool:
        """Whether the current store keeps the user index (see ``require_index``)."""
        return bool(getattr(self.current, "user_index", True))

    def move(self, key: str, now: datetime) -> bool:
        """Move the live session under ``key`` from the old store; False if it had none.

        :raises BackendError: a store failed; a session already taken is put
            back in the old store first, so it is never lost.
        """
        record = self.old.take(key, now)
        if record is None:
            return False
        if record.user is None and self.user_of is not None:
            record = replace(record, user=self.user_of(record.data))
        try:
            self.current.create(key, record)
        except BackendError:
            self._put_back(key, record)
            raise
        return True

    def _put_back(self, key: str, record: Record) -> None:
        try:
            if getattr(self.old, "user_index", True) is False:
                record = replace(record, user=None)
            self.old.create(key, record)
        except BackendError as e:
            logger.error("Session %s, taken from the old store, could not be put back: %s", key, e)

    def _brought(self, key: str, now: datetime) -> bool:
        """Make sure ``key`` is in the current store if it is live anywhere; say whether."""
        return self.move(key, now) or self._settled(key)

    def _settled(self, key: str) -> bool:
        """Wait for a move of ``key`` under way elsewhere; say whether it arrived."""
        # Taken a moment ago by another request or the migrate command,
        # which creates it in the current store next: wait for that.
        deadline = time.monotonic() + self.settle_time
        pause = 0.005
        while time.monotonic() < deadline:
            time.sleep(pause)
            if self.current.load(key) is not None:
                return True
            pause = min(pause * 2, 0.2)
        return False

    def old_keys(self, now: datetime) -> list[str]:
        """The keys of the sessions live in the old store at ``now``."""
        return [key for key, _record in self.old.items(now)]

    # The Backend interface.

    def load(self, key: str) -> Record | None:
        record = self.current.load(key)
        if record is None and self._brought(key, self.clock()):
            record = self.current.load(key)
        return record

    def create(self, key: str, record: Record) -> None:
        self.current.create(key, record)

    def update(self, key: str, delta: Delta, now: datetime) -> bool:
        if self.current.update(key, delta, now):
            return True
        return self._brought(key, now) and self.current.update(key, delta, now)

    def touch(self, key: str, expires_at: datetime, now: datetime) -> bool:
        if self.current.touch(key, expires_at, now):
            return True
        return self._brought(key, now) and self.current.touch(key, expires_at, now)

    def take(self, key: str, now: datetime) -> Record | None:
        record = self.current.take(key, now)
        if record is None:
            record = self.old.take(key, now)
        if record is None and self._settled(key):
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
