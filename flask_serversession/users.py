from __future__ import annotations

import re
import typing as t
import uuid
from dataclasses import dataclass
from dataclasses import replace
from datetime import datetime
from datetime import timezone

from flask import has_request_context
from flask import request

from .backends.base import Backend
from .backends.base import Delta
from .backends.base import Record
from .binding import BINDING_KEY
from .errors import ConfigError
from .log import logger
from .signals import send
from .signals import session_capped
from .signals import session_revoked
from .stored import is_meta
from .stored import META_PREFIX
from .stored import StoredSession

if t.TYPE_CHECKING:
    from .config import Settings
    from .lifetime import Lifetimes
    from .serialization import SessionSerializer

#: When the session was last seen, in seconds since the epoch.
SEEN_KEY = "_serversession_seen"
#: ``[user_agent, remote_addr]`` of the request that created the session.
CLIENT_KEY = "_serversession_client"
# A User-Agent is kept to this many characters; some clients send kilobytes.
_USER_AGENT_LENGTH = 512
_STORAGE_KEY = re.compile("[0-9a-f]{64}")
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")
_USER_TYPES = (str, int, uuid.UUID)


def user_value(value: t.Any) -> str | None:
    """Return the user a ``SERVERSESSION_USER_KEY`` value names, as indexed.

    A str, an int or a UUID names the user ``str(value)``, so ``123`` and
    ``"123"`` are one user. None, ``""`` and values of other types name no user.
    """
    return (str(value) or None) if type(value) in _USER_TYPES else None


@dataclass(frozen=True)
class SessionInfo:
    """One live session of a user, as ``ServerSession.user_sessions()`` lists it.

    :param storage_key: the key the session is stored under; pass it to
        :meth:`~flask_serversession.ServerSession.revoke`. It is not a token.
    :param user_id: the user, as ``str()`` of the session's user value.
    :param created_at: when the session was created, aware UTC.
    :param expires_at: when it expires unless renewed, aware UTC.
    :param last_seen: when a request last used it, to within
        ``SERVERSESSION_LAST_SEEN_EVERY``; ``created_at`` for a session stored
        before ``SERVERSESSION_USER_KEY`` was set.
    :param user_agent: the User-Agent of the request that created it, with
        ``SERVERSESSION_TRACK_CLIENT``; otherwise None.
    :param remote_addr: the remote address of that request, likewise.
    :param current: it is the session of the request in progress.
    :param device_bound: it is bound to a device key (``SERVERSESSION_DEVICE_BOUND``).

    .. versionadded:: 0.2
    .. versionchanged:: 0.3
        ``device_bound``.
    """

    storage_key: str
    user_id: str
    created_at: datetime
    expires_at: datetime
    last_seen: datetime
    user_agent: str | None = None
    remote_addr: str | None = None
    current: bool = False
    device_bound: bool = False


def _timestamp(value: t.Any) -> datetime:
    if type(value) not in (int, float) or not 0 <= value < 1e11:
        raise ValueError(f"a last-seen time of {value!r}")
    return datetime.fromtimestamp(value, timezone.utc)


def _client(value: t.Any) -> tuple[str | None, str | None]:
    if (
        type(value) is not list
        or len(value) != 2
        or not all(v is None or type(v) is str for v in value)
    ):
        raise ValueError(f"a client of {value!r}")
    return value[0], value[1]


#: Returns the storage key of the request's own session, or None.
CurrentKey = t.Callable[[], "str | None"]


def _no_session() -> None:
    return None


class Host(t.Protocol):
    """What the users' side uses of the store it serves."""

    backend: Backend
    settings: Settings
    serializer: SessionSerializer
    lifetimes: Lifetimes
    clock: t.Callable[[], datetime]


class Users:
    """The users' side of a session store: who a session belongs to, when it
    was last seen, and ending sessions by user.

    :param store: the store whose backend, serializer, clock and settings apply.
    """

    def __init__(self, store: Host) -> None:
        self.store = store

    @property
    def user_key(self) -> str | None:
        return self.store.settings.user_key

    @property
    def backend(self) -> Backend:
        return self.store.backend

    def _dumps(self, value: t.Any) -> str:
        return self.store.serializer.dumps(value)

    def check(self, key: str, value: t.Any) -> None:
        """Refuse a session key that is reserved, or a user value that indexes as no user.

        :raises TypeError: naming the key.
        """
        if is_meta(key):
            raise TypeError(
                f"Session key {key!r} is reserved: keys starting with {META_PREFIX!r}"
                " hold the session's own metadata."
            )
        if key == self.user_key and value is not None and type(value) not in _USER_TYPES:
            raise TypeError(
                f"Session key {key!r} names the signed-in user (SERVERSESSION_USER_KEY) but"
                f" holds a {type(value).__name__}. Store the user's id as a str or an int."
            )

    def check_values(self, data: t.Mapping[str, str]) -> None:
        """Raise ValueError when the stored metadata is not of the shape written here."""
        if SEEN_KEY in data:
            _timestamp(self.store.serializer.loads(data[SEEN_KEY]))
        if CLIENT_KEY in data:
            _client(self.store.serializer.loads(data[CLIENT_KEY]))

    def user_of(self, data: t.Mapping[str, str]) -> str | None:
        """The user that a record's stored data names; None without ``SERVERSESSION_USER_KEY``."""
        if self.user_key is None or self.user_key not in data:
            return None
        try:
            return user_value(self.store.serializer.loads(data[self.user_key]))
        except Exception:
            # Damaged data names no one; the record is reported where it is decoded.
            return None

    def record(self, record: Record, now: datetime) -> Record:
        """Return a record to create: with its user, and last seen now."""
        if self.user_key is None:
            return record
        data = {**record.data, SEEN_KEY: self._dumps(now.timestamp())}
        if self.store.settings.track_client and CLIENT_KEY not in data and has_request_context():
            agent = request.headers.get("User-Agent")
            if agent is not None:
                agent = _UNPRINTABLE.sub("", agent)[:_USER_AGENT_LENGTH]
            data[CLIENT_KEY] = self._dumps([agent, request.remote_addr])
        return replace(record, data=data, user=self.user_of(data))

    def seen_due(self, stored: StoredSession, now: datetime) -> bool:
        """Whether a request that changes nothing should still record that it saw the session."""
        if self.user_key is None:
            return False
        if SEEN_KEY not in stored.meta:
            return True
        seen = _timestamp(self.store.serializer.loads(stored.meta[SEEN_KEY]))
        return now - seen >= self.store.settings.last_seen_every

    def update(
        self, stored: StoredSession, values: t.Mapping[str, t.Any], delta: Delta, now: datetime
    ) -> bool:
        """Apply ``delta`` to a stored session with its last-seen time and user.

        A change of user moves the session in the user index in the same
        step, then holds the new user to ``SERVERSESSION_MAX_SESSIONS_PER_USER``.
        Returns False when the session is gone, as the backend's ``update``.
        """
        if self.user_key is None:
            return self.backend.update(stored.key, delta, now)
        before = user_value(stored.values.get(self.user_key))
        after = user_value(values.get(self.user_key))
        # Every write made with the user key set records the last-seen time,
        # so a record without one was stored before: its user is not indexed yet.
        unindexed = after is not None and SEEN_KEY not in stored.meta
        delta = replace(
            delta,
            set={**delta.set, SEEN_KEY: self._dumps(now.timestamp())},
            user=after,
            user_changed=before != after or unindexed,
        )
        if not self.backend.update(stored.key, delta, now):
            return False
        if delta.user_changed:
            self.enforce_limit(stored.key, after, now)
        return True

    def enforce_limit(self, key: str, user: str | None, now: datetime) -> None:
        """End the least recently seen sessions of ``user`` past the per-user limit.

        The session stored under ``key``, just written, is never one of them.
        """
        limit = self.store.settings.max_sessions_per_user
        if user is None or limit is None:
            return
        others = [(k, r) for k, r in self._live_records(user, now) if k != key]
        excess = len(others) + 1 - limit
        if excess > 0:
            others.sort(key=lambda item: self._last_seen(item[1]))
            for other, _record in others[:excess]:
                send(session_capped, storage_key=other, user_id=user)
                self.revoke(other)

    def _live_records(self, user: str, now: datetime) -> list[tuple[str, Record]]:
        if self.user_key is None:
            raise ConfigError(
                "SERVERSESSION_USER_KEY is not set: set it to the session key that names"
                " the signed-in user (Flask-Login's is '_user_id')."
            )
        records = self.backend.user_records(user, now)
        return [(k, r) for k, r in records if not self.store.lifetimes.is_expired(r, now)]

    def _last_seen(self, record: Record) -> datetime:
        try:
            return _timestamp(self.store.serializer.loads(record.data[SEEN_KEY]))
        except (KeyError, ValueError):
            return record.created_at

    def _info(self, key: str, user: str, record: Record, current: str | None) -> SessionInfo:
        agent = addr = None
        if CLIENT_KEY in record.data:
            agent, addr = _client(self.store.serializer.loads(record.data[CLIENT_KEY]))
        return SessionInfo(
            storage_key=key,
            user_id=user,
            created_at=record.created_at,
            expires_at=record.expires_at,
            last_seen=self._last_seen(record),
            user_agent=agent,
            remote_addr=addr,
            current=key == current,
            device_bound=BINDING_KEY in record.data,
        )

    def sessions(self, user_id: t.Any, *, current: CurrentKey = _no_session) -> list[SessionInfo]:
        """Return the live sessions of a user, newest first.

        :param current: returns the storage key of the request's own session.
        """
        user = self._user(user_id)
        current_key = current()
        infos = []
        for key, record in self._live_records(user, self.store.clock()):
            try:
                infos.append(self._info(key, user, record, current_key))
            except ValueError as e:
                logger.error("Stored session %s is damaged, not listed: %s", key, e)
        infos.sort(key=lambda info: (info.created_at, info.storage_key), reverse=True)
        return infos

    def revoke(self, storage_key: str) -> bool:
        """End the session stored under ``storage_key``; False when there was no live one."""
        if not isinstance(storage_key, str) or not _STORAGE_KEY.fullmatch(storage_key):
            return False
        taken = self.backend.take(storage_key, self.store.clock())
        if taken is None:
            return False
        user = taken.user if taken.user is not None else self.user_of(taken.data)
        send(session_revoked, storage_key=storage_key, user_id=user)
        return True

    def revoke_user(
        self, user_id: t.Any, *, keep_current: bool = True, current: CurrentKey = _no_session
    ) -> int:
        """End every session of a user, but the request's own with ``keep_current``.

        :param current: returns the storage key of the request's own session.
        """
        user = self._user(user_id)
        kept = current() if keep_current else None
        records = self._live_records(user, self.store.clock())
        return sum(self.revoke(key) for key, _record in records if key != kept)

    @staticmethod
    def _user(user_id: t.Any) -> str:
        user = user_value(user_id)
        if user_id == "":
            raise ValueError("A user id is a non-empty str or an int; this one is empty.")
        if user is None:
            raise TypeError(f"A user id is a str or an int, not {type(user_id).__name__}.")
        return user


def require_index(backend: Backend, user_key: str | None) -> None:
    """Refuse ``SERVERSESSION_USER_KEY`` with a backend that keeps no user index."""
    if user_key is not None and type(backend).user_records is Backend.user_records:
        raise ConfigError(
            f"SERVERSESSION_USER_KEY = {user_key!r} cannot be used:"
            f" {type(backend).__name__} keeps no user index (it does not implement"
            " user_records). Use a backend that does, or leave the key unset."
        )
    if user_key is not None and getattr(backend, "user_index", True) is False:
        raise ConfigError(
            f"SERVERSESSION_USER_KEY = {user_key!r} cannot be used: this"
            f" {type(backend).__name__} was built without its user index."
            " Build it with user_index=True."
        )
