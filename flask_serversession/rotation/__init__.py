"""Rotation: every ``SERVERSESSION_ROTATE_EVERY`` the client gets a new token, with no sign-out.

A rotation changes what the client holds, never where the session lives.
The session keeps one id, and so one storage key, for its whole life; the
token carries the id and a rotating secret. The record keeps a hash of the
current secret and of the two before it (when each was given and first
used), and each newer secret sealed with the one before it, so that a
request bringing an older token within its grace is handed the current one,
on any worker and whatever its ``SECRET_KEY``, while a copy of the store
holds nothing that makes a token. A rotation is one compare-and-set of that
state (:attr:`~flask_serversession.backends.base.Delta.expect`) in the same
atomic update as the request's own changes: of two requests that rotate at
once, one wins and the other reads the new secret it sealed. Sign-out,
revoke, the per-user cap, ``delete()``, writes in flight and sign-ins all
name the one storage key, and a failed update leaves the session as it was.
"""

from __future__ import annotations

import typing as t
from dataclasses import replace
from datetime import datetime
from datetime import timezone

from ..backends.base import CorruptRecordError
from ..backends.base import Delta
from ..signals import send
from ..signals import session_rotated
from ..signals import session_token_reused
from ..stored import Opened
from ..stored import SaveOutcome
from ..stored import SessionState
from ..stored import StoredSession
from ..tokens import UNKNOWN
from .state import dump
from .state import fresh
from .state import new_secret
from .state import read
from .state import read_used
from .state import ROTATION_KEY
from .state import State
from .state import USED_KEY
from .state import used_text

if t.TYPE_CHECKING:
    from ..backends.base import Backend
    from ..config import Settings
    from ..serialization import SessionSerializer
    from ..users import Users

__all__ = ["ROTATION_KEY", "USED_KEY", "admit", "before_save", "check", "given_at"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# A compare-and-set lost to a request that only marked the secret used is tried again.
_ATTEMPTS = 3


class Host(t.Protocol):
    """What rotation uses of the store it serves."""

    backend: Backend
    settings: Settings
    users: Users
    serializer: SessionSerializer

    def token_for(self, sid: str, secret: str | None = None) -> str: ...


def _state(serializer: SessionSerializer, stored: StoredSession) -> State:
    return read(serializer, stored.meta, stored.created_at)


def check(serializer: SessionSerializer, data: t.Mapping[str, str]) -> None:
    """Raise ValueError when the stored rotation state is not of the shape written here."""
    read(serializer, data, _EPOCH)
    if USED_KEY in data:
        read_used(serializer, data[USED_KEY])


def given_at(serializer: SessionSerializer, stored: StoredSession) -> datetime:
    """When the session's current token was given (at creation, sign-in or rotation)."""
    return _state(serializer, stored).secrets[0].given


def admit(
    store: Host, stored: StoredSession, secret: str | None, now: datetime, *, connected: bool
) -> Opened:
    """What a token with ``secret`` opens of the live session ``stored``.

    The current secret opens it. An older one kept in the record opens it
    until the secret after it has been used and the grace has passed (the
    response hands over the current token); after that it is a reuse. A
    secret the record does not keep opens nothing.

    :param connected: the token came with a Socket.IO connection made
        before a rotation, which cannot be given the new token: an older
        secret still kept opens the session, grace or not, and is no reuse.
    """
    state = _state(store.serializer, stored)
    position = state.find(stored.sid, secret)
    if position is None:
        return Opened(verified=True, rejected=UNKNOWN)
    if position == 0:
        return Opened(replace(stored, secret=secret), verified=True)
    started = state.secrets[position - 1].used
    if connected or started is None or now < started + store.settings.rotate_grace:
        current = state.current(stored.sid, secret, position)
        return Opened(replace(stored, secret=current, handed_over=True), verified=True)
    send(session_token_reused, storage_key=stored.key, reused_storage_key=stored.key)
    if store.settings.revoke_on_reuse:
        store.users.revoke(stored.key)
    return Opened(verified=True)


def before_save(
    store: Host,
    session: SessionState,
    stored: StoredSession,
    changed: dict[str, str],
    deleted: frozenset[str],
    expires_at: datetime,
    values: t.Mapping[str, t.Any],
    now: datetime,
    can_set_cookie: bool,
) -> SaveOutcome | None:
    """Rotate the session's secret when it is due; else note a first use of it.

    Returns what the save means for the cookie when it rotated (the save is
    then done), None when the save goes on as without rotation. A sign-in
    (``regenerate()``) gives the new id a fresh state in ``changed``.
    """
    if session.regenerate_requested:
        changed[ROTATION_KEY] = dump(store.serializer, fresh(now))
        return None
    if stored.handed_over:
        # An older token: its holder is handed the current one, which rotates later.
        return None
    state = _state(store.serializer, stored)
    every = store.settings.rotate_every
    if can_set_cookie and every is not None and state.secrets[0].given + every <= now:
        return _rotate(store, stored, changed, deleted, expires_at, values, now)
    current = state.secrets[0]
    if current.used is None:
        # The first use of a new secret starts the grace of the one before it:
        # written with this request's changes, in place of the rotation's blank.
        changed[USED_KEY] = used_text(store.serializer, current.digest, now)
    return None


def _rotate(
    store: Host,
    stored: StoredSession,
    changed: dict[str, str],
    deleted: frozenset[str],
    expires_at: datetime,
    values: t.Mapping[str, t.Any],
    now: datetime,
) -> SaveOutcome:
    """Give the session a new secret and write this request's changes, in one update."""
    sid, secret, key = stored.sid, stored.secret, stored.key
    meta: t.Mapping[str, str] = stored.meta
    # The rotation alone never makes a session too large to be read.
    max_size = store.settings.max_size if changed or deleted else None
    for _ in range(_ATTEMPTS):
        try:
            state = read(store.serializer, meta, stored.created_at)
        except ValueError:
            return SaveOutcome()  # damaged meanwhile: the next load says so
        position = state.find(sid, secret)
        if position != 0:
            # Another request rotated it first: hand over the secret it chose.
            current = None if position is None else state.current(sid, secret, position)
            return _write(store, stored, changed, deleted, expires_at, values, now, current)
        new = new_secret()
        rotated = state.rotated(sid, secret, new, now)
        rotation = {
            **changed,
            ROTATION_KEY: dump(store.serializer, rotated),
            USED_KEY: used_text(store.serializer, rotated.secrets[0].digest, None),
        }
        expect = (ROTATION_KEY, meta.get(ROTATION_KEY))
        delta = Delta(expires_at, rotation, deleted, values, max_size, expect=expect)
        if store.users.update(stored, values, delta, now):
            send(session_rotated, old_storage_key=key, storage_key=key)
            return SaveOutcome(store.token_for(sid, new), expires_at, id_changed=True)
        try:
            record = store.backend.load(key)
        except CorruptRecordError:
            return SaveOutcome()
        if record is None or record.expires_at <= now:
            # Ended meanwhile (sign-out, revoke, sign-in): nothing to write.
            return SaveOutcome()
        meta = record.data
    return _write(store, stored, changed, deleted, expires_at, values, now, None)


def _write(
    store: Host,
    stored: StoredSession,
    changed: dict[str, str],
    deleted: frozenset[str],
    expires_at: datetime,
    values: t.Mapping[str, t.Any],
    now: datetime,
    current: str | None,
) -> SaveOutcome:
    """Write this request's changes to a session another request rotated meanwhile."""
    if changed or deleted:
        delta = Delta(expires_at, changed, deleted, values, store.settings.max_size)
        if not store.users.update(stored, values, delta, now):
            return SaveOutcome()
    if current is None:
        return SaveOutcome()
    return SaveOutcome(store.token_for(stored.sid, current), expires_at, id_changed=True)
