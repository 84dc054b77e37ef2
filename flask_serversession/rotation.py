"""Rotation: a session's id changes every ``SERVERSESSION_ROTATE_EVERY``, with no sign-out.

The id a session rotates to is derived from the one it had, with the app's
secret key: ``successor(id) = HMAC(key, id)``. Every request that holds the
old token, on any worker, therefore finds the same new session without a
pointer left behind, and nothing is stored for rotated-out ids. Of two
requests that rotate at once, the one whose ``take`` gets the old record
creates the new one; the other finds it and writes there. An old token opens
the new session until the new token has been used and the grace has passed;
after that its use is reported (``session_token_reused``) and, by default,
ends the session. An old id is recognised while the session lives on under
its successor or the successor's successor: two rotations.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import typing as t
from dataclasses import replace
from datetime import datetime
from datetime import timedelta
from datetime import timezone

from .backends.base import CorruptRecordError
from .backends.base import Delta
from .backends.base import Record
from .regeneration import take_with_changes
from .signals import send
from .signals import session_rotated
from .signals import session_token_reused
from .stored import decode
from .stored import Opened
from .stored import SaveOutcome
from .stored import StoredSession
from .tokens import UNKNOWN

if t.TYPE_CHECKING:
    from .backends.base import Backend
    from .config import Settings
    from .serialization import SessionSerializer
    from .users import Users

#: The stored key of the current id's rotation state: when the id was given,
#: and when a request first brought it (None until then).
ROTATION_KEY = "_serversession_rotation"
# Waits for the new record of a rotation that another request is finishing:
# its take and its create are one round trip apart.
_WAITS = (0.0, 0.002, 0.008, 0.032)
_SALT = b"flask-serversession rotation\x00"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class Host(t.Protocol):
    """What rotation uses of the store it serves."""

    backend: Backend
    settings: Settings
    users: Users
    serializer: SessionSerializer

    def storage_key(self, sid: str) -> str: ...

    def token_for(self, sid: str) -> str: ...

    def rotation_secret(self) -> bytes: ...

    def check_meta(self, data: t.Mapping[str, str]) -> None: ...


def successor(secret: bytes, sid: str) -> str:
    """The id a session with id ``sid`` rotates to: 256 bits only the app can derive."""
    digest = hmac.new(secret, _SALT + sid.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _timestamp(value: datetime) -> float:
    return (value - _EPOCH).total_seconds()


def _time(value: t.Any) -> datetime:
    if type(value) not in (int, float) or not 0 <= value < 1e11:
        raise ValueError(f"a rotation time is {value!r}")
    return _EPOCH + timedelta(seconds=value)


def state(serializer: SessionSerializer, stored: StoredSession) -> tuple[datetime, datetime | None]:
    """When the session's id was given, and when a request first brought it.

    A session that never rotated has had its id since it was created, and
    its token counts as used.
    """
    text = stored.meta.get(ROTATION_KEY)
    if text is None:
        return stored.created_at, stored.created_at
    given, used = serializer.loads(text)
    return _time(given), None if used is None else _time(used)


def check(serializer: SessionSerializer, data: t.Mapping[str, str]) -> None:
    """Raise ValueError when the stored rotation state is not of the shape written here."""
    if ROTATION_KEY in data:
        value = serializer.loads(data[ROTATION_KEY])
        if type(value) is not list or len(value) != 2:
            raise ValueError(f"the rotation state is {value!r}")
        _time(value[0])
        if value[1] is not None:
            _time(value[1])


def text(serializer: SessionSerializer, given: datetime, used: datetime | None) -> str:
    return serializer.dumps([_timestamp(given), None if used is None else _timestamp(used)])


def mark(
    serializer: SessionSerializer,
    stored: StoredSession,
    changed: dict[str, str],
    now: datetime,
    regenerated: bool,
) -> None:
    """Record in ``changed`` what a save that does not rotate tells of the id.

    A regenerated id counts from now and is in use; a request that brings a
    new id first starts its old one's grace.
    """
    if regenerated:
        changed[ROTATION_KEY] = text(serializer, now, now)
    elif not stored.handed_over:
        given, used = state(serializer, stored)
        if used is None:
            changed[ROTATION_KEY] = text(serializer, given, now)


def due(store: Host, stored: StoredSession, now: datetime) -> bool:
    """Whether the session's id is older than ``SERVERSESSION_ROTATE_EVERY``."""
    every = store.settings.rotate_every
    return every is not None and state(store.serializer, stored)[0] + every <= now


def _load_soon(store: Host, key: str) -> t.Any:
    """Load ``key``, waiting briefly for a rotation that is being finished."""
    for wait in _WAITS:
        if wait:
            time.sleep(wait)
        record = store.backend.load(key)
        if record is not None:
            return record
    return None


def follow(store: Host, sid: str, now: datetime, *, connected: bool = False) -> Opened:
    """Open, for a token whose id has no record, the session it rotated into.

    :param connected: the token came with a Socket.IO connection made
        before the rotation, which cannot be given the new token: it opens
        the session for two rotations, grace or not, and is no reuse.
    """
    old_key = store.storage_key(sid)
    secret = store.rotation_secret()
    first = successor(secret, sid)
    key = store.storage_key(first)
    record = _load_soon(store, key)
    hops = 1
    if record is None:
        hops, first = 2, successor(secret, first)
        key = store.storage_key(first)
        record = store.backend.load(key)
        if record is None:
            return Opened(verified=True, rejected=UNKNOWN)
    if record.expires_at <= now:
        return Opened(verified=True, rejected=UNKNOWN)
    try:
        stored = decode(store.serializer, first, key, record, store.check_meta)
    except CorruptRecordError:
        return Opened(verified=True)
    given, used = state(store.serializer, stored)
    # Two rotations back, the grace started when the id in between was
    # first used, at the latest when it was rotated out.
    started = used if hops == 1 else given
    if not connected and started is not None and started + store.settings.rotate_grace <= now:
        return _reused(store, key, old_key)
    return Opened(replace(stored, handed_over=True), verified=True)


def _reused(store: Host, key: str, reused_key: str) -> Opened:
    send(session_token_reused, storage_key=key, reused_storage_key=reused_key)
    if store.settings.revoke_on_reuse:
        store.users.revoke(key)
    return Opened(verified=True)


def rotate(
    store: Host,
    stored: StoredSession,
    changed: dict[str, str],
    deleted: frozenset[str],
    expires_at: datetime,
    values: t.Mapping[str, t.Any],
    now: datetime,
) -> SaveOutcome:
    """Move ``stored``, with this request's changes, to its successor id."""
    state_now = {ROTATION_KEY: text(store.serializer, now, None)}
    max_size = store.settings.max_size
    moved = take_with_changes(store.backend, max_size, stored, changed | state_now, deleted, now)
    if moved is None:
        # Another request rotated it first (or it ended): write where it went.
        return carry(store, stored, changed, deleted, expires_at, values, now)
    taken, data = moved
    sid = successor(store.rotation_secret(), stored.sid)
    key = store.storage_key(sid)
    expires_at = max(expires_at, taken.expires_at)
    record = Record(data, taken.created_at, expires_at, values, user=store.users.user_of(data))
    store.backend.create(key, record)
    send(session_rotated, old_storage_key=stored.key, storage_key=key)
    return SaveOutcome(store.token_for(sid), expires_at, id_changed=True)


def carry(
    store: Host,
    stored: StoredSession,
    changed: dict[str, str],
    deleted: frozenset[str],
    expires_at: datetime,
    values: t.Mapping[str, t.Any],
    now: datetime,
) -> SaveOutcome:
    """Write this request's changes to the session ``stored`` rotated into meanwhile.

    Nothing is written, and the cookie left alone, when it did not rotate but
    ended (or moved to an id of its own at a sign-in).
    """
    sid = successor(store.rotation_secret(), stored.sid)
    key = store.storage_key(sid)
    record = _load_soon(store, key)
    if record is None or record.expires_at <= now:
        return SaveOutcome()
    try:
        moved = decode(store.serializer, sid, key, record, store.check_meta)
    except CorruptRecordError:
        return SaveOutcome()
    if changed or deleted:
        expires_at = max(expires_at, moved.expires_at)
        delta = Delta(expires_at, changed, deleted, values, store.settings.max_size)
        if not store.users.update(moved, values, delta, now):
            return SaveOutcome()
    else:
        expires_at = moved.expires_at
    return SaveOutcome(store.token_for(sid), expires_at, id_changed=True)
