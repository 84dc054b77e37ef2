from __future__ import annotations

import threading
import typing as t
from datetime import datetime
from datetime import timedelta
from time import perf_counter

from ..backends.base import Backend
from ..backends.base import Delta
from ..backends.base import Record
from ..errors import BackendError
from .names import CREATED
from .names import DURATION
from .names import ERRORS
from .names import OPERATIONS
from .names import PURGED
from .names import SIZE
from .recorder import Recorder

_T = t.TypeVar("_T")


def _size(data: t.Mapping[str, str]) -> int:
    """:func:`~flask_serversession.backends.base.data_size`, from two joins rather than a loop."""
    return len("".join(data).encode()) + len("".join(data.values()).encode())


def _size_after(data: t.Mapping[str, str], delta: Delta) -> int:
    """The stored size of ``data`` once ``delta`` is applied, without building it."""
    size = _size(data)
    for name in delta.deleted:
        old = data.get(name)
        if old is not None and name not in delta.set:
            size -= len(name.encode()) + len(old.encode())
    for name, value in delta.set.items():
        old = data.get(name)
        size += len(value.encode()) - (
            len(old.encode()) if old is not None else -len(name.encode())
        )
    return size


class MeteredBackend(Backend):
    """Times every call of ``wrapped`` by operation, counts its failures, sizes and new sessions.

    A record created right after one was taken in the same thread is a
    session moving to a new id (regenerated, rotated), not a new session;
    :meth:`settle` ends a take that no create follows (a revoke). So new
    sessions are counted here, without a signal receiver on every new
    session's path. It changes no result: each call goes to ``wrapped`` as it came, and what
    it returns or raises comes back unchanged. Attributes it does not have
    (``table``, ``client`` ...) are read from ``wrapped``.

    :param wrapped: the backend that stores.
    :param recorder: where the measurements go.

    .. versionadded:: 0.3
    """

    def __init__(self, wrapped: Backend, recorder: Recorder) -> None:
        self.wrapped = wrapped
        self._timed = {op: recorder.instrument(DURATION, operation=op) for op in OPERATIONS}
        self._failed = {op: recorder.instrument(ERRORS, operation=op) for op in OPERATIONS}
        self._size = recorder.instrument(SIZE)
        self._created = recorder.instrument(CREATED)
        self._purged = recorder.instrument(PURGED)
        # The record a thread loaded last: an update's size is reckoned from it.
        self._loaded = threading.local()
        # Whether a thread took a record that a create is about to move.
        self._moving = threading.local()

    def __getattr__(self, name: str) -> t.Any:
        if name == "wrapped":
            raise AttributeError(name)
        return getattr(self.wrapped, name)

    def _call(self, operation: str, call: t.Callable[..., _T], *args: t.Any, **kwargs: t.Any) -> _T:
        start = perf_counter()
        try:
            return call(*args, **kwargs)
        except BackendError:
            self._failed[operation](1)
            raise
        finally:
            self._timed[operation](perf_counter() - start)

    def load(self, key: str) -> Record | None:
        start = perf_counter()
        try:
            record = self.wrapped.load(key)
        except BackendError:
            self._failed["load"](1)
            raise
        finally:
            self._timed["load"](perf_counter() - start)
        self._loaded.last = (key, record)
        return record

    def create(self, key: str, record: Record) -> None:
        moving = getattr(self._moving, "now", False)
        if moving:
            self._moving.now = False
        start = perf_counter()
        try:
            self.wrapped.create(key, record)
        except BackendError:
            self._failed["create"](1)
            raise
        finally:
            self._timed["create"](perf_counter() - start)
        self._size(_size(record.data))
        if not moving:
            self._created(1)

    def update(self, key: str, delta: Delta, now: datetime) -> bool:
        start = perf_counter()
        try:
            updated = self.wrapped.update(key, delta, now)
        except BackendError:
            self._failed["update"](1)
            raise
        finally:
            self._timed["update"](perf_counter() - start)
        last = getattr(self._loaded, "last", None)
        if updated and last is not None and last[0] == key and last[1] is not None:
            self._loaded.last = None
            self._size(_size_after(last[1].data, delta))
        return updated

    def touch(self, key: str, expires_at: datetime, now: datetime) -> bool:
        start = perf_counter()
        try:
            return self.wrapped.touch(key, expires_at, now)
        except BackendError:
            self._failed["touch"](1)
            raise
        finally:
            self._timed["touch"](perf_counter() - start)

    def take(self, key: str, now: datetime) -> Record | None:
        taken = self._call("take", self.wrapped.take, key, now)
        if taken is not None:
            self._moving.now = True
        return taken

    def settle(self) -> None:
        """A record this thread took is not moving: a create that follows is a new session."""
        self._moving.now = False

    def delete(self, key: str) -> None:
        self._call("delete", self.wrapped.delete, key)

    def purge_expired(self, now: datetime, *, longest_lifetime: timedelta | None = None) -> int:
        purge = self.wrapped.purge_expired
        removed = self._call("purge", purge, now, longest_lifetime=longest_lifetime)
        self._purged(removed)
        return removed

    def count(self, now: datetime) -> int:
        return self._call("count", self.wrapped.count, now)

    def items(self, now: datetime) -> t.Iterator[tuple[str, Record]]:
        # Timed from the first call to the last record, as a caller waits for them.
        start = perf_counter()
        try:
            yield from self.wrapped.items(now)
        except BackendError:
            self._failed["items"](1)
            raise
        finally:
            self._timed["items"](perf_counter() - start)

    def clear(self) -> int:
        return self._call("clear", self.wrapped.clear)

    def user_records(self, user: str, now: datetime) -> list[tuple[str, Record]]:
        return self._call("user_records", self.wrapped.user_records, user, now)

    def add(self, key: str, record: Record, now: datetime) -> bool:
        return self._call("add", self.wrapped.add, key, record, now)

    def rewrite(self, key: str, expected: Record, delta: Delta, now: datetime) -> bool:
        return self._call("rewrite", self.wrapped.rewrite, key, expected, delta, now)

    def close(self) -> None:
        self.wrapped.close()
