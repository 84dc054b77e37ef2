"""``session.regenerate()``: the session moves to a new id, and the old one ends at once."""

from __future__ import annotations

import typing as t
from datetime import datetime

from .backends.base import Backend
from .backends.base import check_size
from .backends.base import data_size
from .backends.base import Record
from .errors import SessionTooLargeError
from .signals import send
from .signals import session_destroyed
from .signals import session_regenerated
from .stored import SaveOutcome
from .stored import StoredSession

if t.TYPE_CHECKING:
    from .config import Settings
    from .lifetime import Lifetimes
    from .users import Users


class Host(t.Protocol):
    """What a regeneration uses of the store it serves."""

    backend: Backend
    settings: Settings
    users: Users
    lifetimes: Lifetimes

    def new_sid(self) -> str: ...

    def storage_key(self, sid: str) -> str: ...

    def token_for(self, sid: str) -> str: ...


def take_with_changes(
    backend: Backend,
    max_size: int,
    stored: StoredSession,
    changed: dict[str, str],
    deleted: frozenset[str],
    now: datetime,
) -> tuple[Record, dict[str, str]] | None:
    """Take the record of ``stored`` and return it with its data as this request leaves it.

    None when there was nothing to take (the session ended, or moved).

    :raises SessionTooLargeError: the changed session passes ``SERVERSESSION_MAX_SIZE``.
    """
    # The old record is taken (read and removed in one step) rather than
    # copied: a sign-out that lands first leaves nothing to take, so its
    # data never reappears under the new id, and changes that other
    # requests made since this one loaded are carried over. A taken record
    # is never put back: a revoke landing after the take found nothing to
    # end, so a record put back would undo it. The size is therefore
    # checked before the take, on the data as loaded.
    full = {**stored.serialized, **stored.meta}
    merged = {k: v for k, v in full.items() if k not in deleted} | changed
    check_size(data_size(full), data_size(merged), max_size)
    taken = backend.take(stored.key, now)
    if taken is None:
        return None
    data = {k: v for k, v in taken.data.items() if k not in deleted}
    data.update(changed)
    try:
        check_size(data_size(taken.data), data_size(data), max_size)
    except SessionTooLargeError:
        # Other requests grew the session meanwhile: it ends here.
        send(session_destroyed, storage_key=stored.key)
        raise
    return taken, data


def regenerate(
    store: Host,
    stored: StoredSession,
    changed: dict[str, str],
    deleted: frozenset[str],
    expires_at: datetime,
    chosen: datetime | None,
    values: t.Mapping[str, t.Any],
    now: datetime,
) -> SaveOutcome:
    """Move ``stored``, with this request's changes, to a new id; end the old id.

    A sign-in restarts both timeouts (SP 800-63B-4 section 5.2): the new id
    counts as created now, so the absolute lifetime restarts, and it expires
    no earlier than a session created now would.

    :param expires_at: the expiry this request gives the session.
    :param chosen: the expiry a lifetime set in this request fixes; None to
        keep the latest of ``expires_at``, the stored record's and a new
        session's.
    :raises SessionTooLargeError: the changed session passes ``SERVERSESSION_MAX_SIZE``.
    """
    max_size = store.settings.max_size
    moved = take_with_changes(store.backend, max_size, stored, changed, deleted, now)
    if moved is None:
        return SaveOutcome(delete_cookie=True)
    taken, data = moved
    if chosen is None:
        fresh = store.lifetimes.started(now, now, stored.lifetime)
        chosen = max(expires_at, taken.expires_at, fresh)
    sid = store.new_sid()
    record = store.users.record(Record(data, now, chosen, values), now)
    key = store.storage_key(sid)
    store.backend.create(key, record)
    send(session_regenerated, old_storage_key=stored.key, storage_key=key)
    store.users.enforce_limit(key, record.user, now)
    return SaveOutcome(store.token_for(sid), chosen, id_changed=True)
