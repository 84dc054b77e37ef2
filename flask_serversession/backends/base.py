from __future__ import annotations

import typing as t
from abc import ABC
from abc import abstractmethod
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timedelta

from ..errors import SessionTooLargeError


@dataclass(slots=True)
class Record:
    """One stored session.

    :param data: serialized value (tagged JSON text) by session key.
    :param created_at: when the session was created, aware UTC.
    :param expires_at: when the session stops being valid, aware UTC.
    :param values: the decoded session as the app sees it, given on writes for
        backends that index fields of it (see ``SQLAlchemyBackend`` extras).
    :param user: the signed-in user the session belongs to, for the user
        index (``SERVERSESSION_USER_KEY``); None for no user.
    """

    data: dict[str, str]
    created_at: datetime
    expires_at: datetime
    values: t.Mapping[str, t.Any] | None = field(default=None, compare=False)
    user: str | None = None


@dataclass(slots=True)
class Delta:
    """What one save changes in a stored session.

    :param expires_at: the new expiry (the old one when nothing renewed it).
    :param set: serialized value by session key, for keys set or changed.
    :param deleted: session keys to remove.
    :param values: the decoded session after the change, as in :class:`Record`.
    :param max_size: the largest :func:`data_size` the stored data may reach
        through this delta; None for no limit.
    :param user: the session's user after the change, when ``user_changed``.
    :param user_changed: the session changed hands (sign-in, sign-out, another
        user); the user index moves in the same atomic step.
    :param expect: ``(key, text)``: apply the delta only if the stored data
        holds ``text`` under ``key`` (None: holds no such key), checked in the
        same atomic step; otherwise write nothing. A rotation's compare-and-set.

    .. versionchanged:: 0.3
        Added ``expect``.
    """

    expires_at: datetime
    set: dict[str, str] = field(default_factory=dict)
    deleted: frozenset[str] = frozenset()
    values: t.Mapping[str, t.Any] | None = field(default=None, compare=False)
    max_size: int | None = None
    user: str | None = None
    user_changed: bool = False
    expect: tuple[str, str | None] | None = None


def expected(data: t.Mapping[str, str], delta: Delta) -> bool:
    """Whether ``data`` holds what ``delta.expect`` asks for (always, when it asks nothing)."""
    return delta.expect is None or data.get(delta.expect[0]) == delta.expect[1]


def data_size(data: t.Mapping[str, str]) -> int:
    """Return the size of a session's stored data: UTF-8 bytes of every key and value."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in data.items())


def applied(data: t.Mapping[str, str], delta: Delta, size: int) -> tuple[dict[str, str], int]:
    """Return ``data`` with ``delta``'s keys set and deleted, and its :func:`data_size`.

    ``size`` is the size of ``data``; the new one is reckoned from what
    changes, not from the whole data. Keys keep their order.
    """
    result = dict(data)
    for name in delta.deleted:
        if name in result:
            size -= len(name.encode()) + len(result.pop(name).encode())
    for name, value in delta.set.items():
        old = result.get(name)
        if old is not None:
            size -= len(old.encode())
        else:
            size += len(name.encode())
        size += len(value.encode())
    result.update(delta.set)
    return result, size


def check_size(before: int, after: int, max_size: int | None) -> None:
    """Refuse a change that takes the stored data past ``max_size``.

    A change that does not grow the data is always allowed, so a session
    stored under a larger limit can still shrink.

    :raises SessionTooLargeError: ``after`` is over the limit and over ``before``.
    """
    if max_size is not None and after > max_size and after > before:
        raise SessionTooLargeError(
            f"The session would take {after} bytes, more than SERVERSESSION_MAX_SIZE"
            f" ({max_size}). It was not saved; the stored session is unchanged."
        )


class CorruptRecordError(Exception):
    """A stored record cannot be decoded; raised by :meth:`Backend.load`."""


class Backend(ABC):
    """Storage for session records, addressed by storage key.

    A storage key is the hex sha256 of a session id, so a backend never holds
    a usable token. Times are aware UTC datetimes. A backend raises
    :class:`~flask_serversession.BackendError` when its store fails and
    :class:`CorruptRecordError` from :meth:`load` when a record cannot be
    decoded; it never returns partial data.
    """

    # Methods that child classes must implement.

    @abstractmethod
    def load(self, key: str) -> Record | None:
        """Return the record stored under ``key``, expired or not, or None."""

    @abstractmethod
    def create(self, key: str, record: Record) -> None:
        """Store ``record`` under ``key``, replacing whatever was there."""

    @abstractmethod
    def update(self, key: str, delta: Delta, now: datetime) -> bool:
        """Apply ``delta`` atomically to the live record under ``key``.

        Keys of the record that the delta does not name keep their stored
        values, so two writers that change different keys both survive.
        Returns False, writing nothing, when there is no record, it expired
        before ``now``, it cannot be decoded or it does not hold what
        ``delta.expect`` asks for: a save never brings back a destroyed
        session. The size limit is checked on the merged result in
        the same atomic step (:func:`check_size`), so concurrent writers
        cannot together pass ``delta.max_size``.

        :raises SessionTooLargeError: the merged data would pass ``delta.max_size``;
            nothing was written.
        """

    @abstractmethod
    def take(self, key: str, now: datetime) -> Record | None:
        """Remove the record under ``key`` and return it, in one atomic step.

        Returns None when there was no live record: absent, expired before
        ``now``, or not decodable (such a record is removed all the same). A
        regenerated session is moved with it, so that a sign-out landing at
        the same moment either wins (nothing is taken) or finds nothing.
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the record under ``key``, if there is one."""

    @abstractmethod
    def purge_expired(self, now: datetime, *, longest_lifetime: timedelta | None = None) -> int:
        """Remove records that expired before ``now``; return how many.

        A store that expires records by itself does not count those. Records
        that cannot be decoded are removed too once no save could have kept
        them live: last written more than ``longest_lifetime`` before ``now``,
        or with an expiry further ahead than that (kept when it is None).
        """

    @abstractmethod
    def count(self, now: datetime) -> int:
        """Return the number of records still live at ``now``."""

    @abstractmethod
    def items(self, now: datetime) -> t.Iterator[tuple[str, Record]]:
        """Yield ``(key, record)`` for records live at ``now``.

        Records that cannot be decoded are logged and skipped.
        """

    @abstractmethod
    def clear(self) -> int:
        """Remove every record of this store; return how many."""

    # Methods with a default that child classes may override.

    def touch(self, key: str, expires_at: datetime, now: datetime) -> bool:
        """Move the expiry of the live record under ``key``; False if gone."""
        return self.update(key, Delta(expires_at=expires_at), now)

    def close(self) -> None:
        """Release connections or handles held by the backend."""
        return None

    def add(self, key: str, record: Record, now: datetime) -> bool:
        """Store ``record`` under ``key`` unless a live record is there; say whether.

        One atomic step: a record expired before ``now``, or one that cannot
        be decoded, counts as absent and is replaced; a live one is left as
        it is. The user index follows as in :meth:`create`. The store that
        sessions move into (``SERVERSESSION_MIGRATE_FROM``) needs it: of the
        processes moving one session at the same moment, exactly one stores
        it. The built-in backends implement it; this default raises
        ``NotImplementedError``.

        .. versionadded:: 0.3
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no atomic add, which a store that sessions"
            " move into (SERVERSESSION_MIGRATE_FROM) needs: implement Backend.add."
        )

    def rewrite(self, key: str, expected: Record, delta: Delta, now: datetime) -> bool:
        """Apply ``delta`` as :meth:`update` does, only while the live record under
        ``key`` still holds ``expected``'s data and expiry, in one atomic step.

        Returns False, writing nothing, when the record changed since it was
        read, is gone or expired: the caller reads it again. It rewrites
        stored values as they are (``flask serversession reencrypt``) without
        undoing a save that landed meanwhile.

        .. versionadded:: 0.3
        """
        raise NotImplementedError(f"{type(self).__name__} cannot rewrite a record in place.")

    def user_records(self, user: str, now: datetime) -> list[tuple[str, Record]]:
        """Return ``(key, record)`` for every live record of ``user``.

        Backends that keep a user index override it. The index is kept with
        the writes (``Record.user``, ``Delta.user``): every record listed is
        live and belongs to ``user`` when listed, and index entries left by
        deletes, expiry or a change of user are bounded and cleaned.

        .. versionadded:: 0.2
        """
        raise NotImplementedError(
            f"{type(self).__name__} keeps no user index, which SERVERSESSION_USER_KEY needs."
        )


def innermost(backend: Backend) -> Backend:
    """The backend that stores, under any wrappers that time or move its calls.

    A wrapper names the backend it wraps in its ``wrapped`` attribute.

    .. versionadded:: 0.3
    """
    while isinstance(getattr(backend, "wrapped", None), Backend):
        backend = backend.wrapped  # type: ignore[attr-defined]
    return backend
