from __future__ import annotations

import threading
import typing as t
from collections import OrderedDict
from datetime import datetime
from datetime import timedelta

from .base import applied
from .base import Backend
from .base import check_size
from .base import data_size
from .base import Delta
from .base import Record


class MemoryBackend(Backend):
    """Keep sessions in a dict of this process, for tests and one-process apps.

    The least recently used session is dropped once ``max_entries`` are
    stored. Records are immutable, so readers never see a half-applied save.
    The user index is kept under the same lock as the records, so it is
    always exact.

    :param max_entries: how many sessions to keep at most.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._records: OrderedDict[str, Record] = OrderedDict()
        # The data_size of each record, kept so that a save checks the size
        # limit by what it changes rather than by the whole record.
        self._sizes: dict[str, int] = {}
        self._users: dict[str, set[str]] = {}
        self._lock = threading.Lock()

    def _index(self, key: str, old: Record | None, new: Record | None) -> None:
        """Move ``key`` in the user index from ``old``'s user to ``new``'s; lock held."""
        before = None if old is None else old.user
        after = None if new is None else new.user
        if before == after:
            return
        if before is not None:
            keys = self._users[before]
            keys.discard(key)
            if not keys:
                del self._users[before]
        if after is not None:
            self._users.setdefault(after, set()).add(key)

    def _pop(self, key: str) -> Record | None:
        record = self._records.pop(key, None)
        self._sizes.pop(key, None)
        self._index(key, record, None)
        return record

    def load(self, key: str) -> Record | None:
        with self._lock:
            record = self._records.get(key)
            if record is not None:
                self._records.move_to_end(key)
            return record

    def create(self, key: str, record: Record) -> None:
        self._store(key, record, None)

    def add(self, key: str, record: Record, now: datetime) -> bool:
        return self._store(key, record, now)

    def _store(self, key: str, record: Record, now: datetime | None) -> bool:
        """Store ``record``; with ``now``, only if no record live at ``now`` is there."""
        data = dict(record.data)
        record = Record(data, record.created_at, record.expires_at, user=record.user)
        size = data_size(data)
        with self._lock:
            there = self._records.get(key)
            if now is not None and there is not None and there.expires_at > now:
                return False
            self._index(key, there, record)
            self._records[key] = record
            self._sizes[key] = size
            self._records.move_to_end(key)
            while len(self._records) > self.max_entries:
                self._pop(next(iter(self._records)))
            return True

    def update(self, key: str, delta: Delta, now: datetime) -> bool:
        with self._lock:
            record = self._records.get(key)
            if record is None or record.expires_at <= now:
                return False
            data = record.data
            before = after = self._sizes[key]
            if delta.set or delta.deleted:
                data, after = applied(data, delta, before)
                check_size(before, after, delta.max_size)
            user = delta.user if delta.user_changed else record.user
            new = Record(data, record.created_at, delta.expires_at, user=user)
            self._index(key, record, new)
            self._records[key] = new
            self._sizes[key] = after
            self._records.move_to_end(key)
            return True

    def take(self, key: str, now: datetime) -> Record | None:
        with self._lock:
            record = self._pop(key)
        return record if record is not None and record.expires_at > now else None

    def delete(self, key: str) -> None:
        with self._lock:
            self._pop(key)

    def purge_expired(self, now: datetime, *, longest_lifetime: timedelta | None = None) -> int:
        with self._lock:
            expired = [k for k, r in self._records.items() if r.expires_at <= now]
            for key in expired:
                self._pop(key)
            return len(expired)

    def count(self, now: datetime) -> int:
        with self._lock:
            return sum(1 for r in self._records.values() if r.expires_at > now)

    def items(self, now: datetime) -> t.Iterator[tuple[str, Record]]:
        with self._lock:
            live = [(k, r) for k, r in self._records.items() if r.expires_at > now]
        yield from live

    def clear(self) -> int:
        with self._lock:
            removed = len(self._records)
            self._records.clear()
            self._sizes.clear()
            self._users.clear()
            return removed

    def user_records(self, user: str, now: datetime) -> list[tuple[str, Record]]:
        with self._lock:
            records = ((k, self._records[k]) for k in self._users.get(user, ()))
            return [(k, r) for k, r in records if r.expires_at > now]
