"""The session as the store and the HTTP layer share it: its stored form, what the store
reads of a request's session, and what a save means for the cookie."""

from __future__ import annotations

import typing as t
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from datetime import timedelta

from .backends.base import CorruptRecordError
from .backends.base import Record
from .serialization import snapshot

if t.TYPE_CHECKING:
    from .serialization import SessionSerializer

#: Stored keys that start with this hold a session's own metadata: they are
#: hidden from the session dict and refused as keys of it.
META_PREFIX = "_serversession_"
#: The session key of Flask's ``session.permanent`` flag; not data of its own.
PERMANENT_KEY = "_permanent"
#: The stored key of a session's own lifetime (seconds); hidden from the session dict.
LIFETIME_KEY = "_serversession_lifetime"

# Values of these exact types cannot change without an assignment, so a save
# need not serialize them again to find out whether they changed.
_IMMUTABLE = frozenset({str, int, float, bool, type(None), bytes})
_NONE: frozenset[str] = frozenset()


def is_meta(key: str) -> bool:
    """Whether a stored key holds metadata rather than a value of the session."""
    return key.startswith(META_PREFIX)


@dataclass(slots=True)
class StoredSession:
    """A live session as loaded from the backend.

    :param sid: the session id (the unsigned token).
    :param key: the storage key, ``sha256(sid)`` in hex.
    :param serialized: the stored serialized value of each key.
    :param values: the decoded value of each key.
    """

    #: Kept out of the repr: the id is a usable token when ids are not signed.
    sid: str = field(repr=False)
    key: str
    serialized: dict[str, str]
    values: dict[str, t.Any]
    created_at: datetime
    expires_at: datetime
    #: The session's own lifetime (``ServerSideSession.set_lifetime``).
    lifetime: timedelta | None = None
    #: The stored metadata (keys starting with :data:`META_PREFIX`), serialized.
    meta: dict[str, str] = field(default_factory=dict)
    #: A :func:`~flask_serversession.serialization.snapshot` of each mutable value as
    #: loaded (None for one without), by key, taken when the app is first handed
    #: the value: the keys whose values may have changed in place.
    snapshots: dict[str, bytes | None] = field(default_factory=dict, repr=False)
    #: Keys of mutable values the app has not been handed yet: unchanged, and
    #: not snapshotted until they are, so a request pays only for what it reads.
    unread: set[str] = field(default_factory=set, repr=False)
    #: Opened through a token the session had before it rotated: the response
    #: hands over the current one.
    handed_over: bool = False
    #: The rotating secret of the client's current token (None: the bare id).
    secret: str | None = field(default=None, repr=False)

    def hand_out(self, data: dict[str, t.Any], keys: t.Iterable[str]) -> None:
        """Snapshot the values of unread ``keys`` in ``data``, which the app is about to get.

        Until the app has a value it cannot have changed it in place, so the
        snapshot taken now is the one a load would take: a request pays only
        for the values it reads.
        """
        for key in keys:
            self.unread.discard(key)
            if dict.__contains__(data, key):
                self.snapshots[key] = snapshot(dict.__getitem__(data, key))


@dataclass(slots=True)
class Opened:
    """What a request's token opened.

    :param stored: the live session, or None.
    :param verified: the token was well formed and, when ids are signed,
        signed with one of the app's keys: its cookie may be expired when it
        opens nothing. A token that could not be verified is left alone, as
        Flask leaves its own cookie: a server that does not know a new key
        yet must not sign the user out.
    :param rejected: why the token opened nothing, for
        ``session_token_rejected``; None when it opened a session, or named
        one that expired or is damaged, or there was no token.
    """

    stored: StoredSession | None = None
    verified: bool = False
    rejected: str | None = None


def _lifetime(serializer: SessionSerializer, data: t.Mapping[str, str]) -> timedelta | None:
    """The session's own lifetime in stored data; ValueError when it is not one."""
    if LIFETIME_KEY not in data:
        return None
    seconds = serializer.loads(data[LIFETIME_KEY])
    if seconds is None:
        return None
    if type(seconds) not in (int, float) or not 0 < seconds < 1e10:
        raise ValueError(f"the session's own lifetime is {seconds!r}")
    return timedelta(seconds=seconds)


def decode_values(
    serializer: SessionSerializer,
    data: t.Mapping[str, str],
    check_meta: t.Callable[[t.Mapping[str, str]], None],
) -> tuple[dict[str, t.Any], timedelta | None]:
    """Decode stored data into the session's values and its own lifetime.

    :param check_meta: raises ValueError when metadata of others is not of its shape.
    :raises CorruptRecordError: a value or the metadata cannot be decoded.
    """
    try:
        values = {k: serializer.loads(v) for k, v in data.items() if not is_meta(k)}
        check_meta(data)
        return values, _lifetime(serializer, data)
    except Exception as e:
        raise CorruptRecordError(f"a stored value cannot be decoded: {e!r}") from e


def decode(
    serializer: SessionSerializer,
    sid: str,
    key: str,
    record: Record,
    check_meta: t.Callable[[t.Mapping[str, str]], None],
) -> StoredSession:
    """The live session ``sid`` stored as ``record``; see :func:`decode_values`.

    Every request that reads its session pays for this, so it goes over the
    record once.
    """
    data = record.data
    meta: dict[str, str] = {}
    values: dict[str, t.Any] = {}
    unread: set[str] = set()
    scan, loads = serializer.scan, serializer.loads
    try:
        for k, text in data.items():
            if k.startswith(META_PREFIX):
                meta[k] = text
                continue
            try:
                value, end = scan(text, 0)
            except (StopIteration, ValueError):
                end = -1
            if end != len(text):
                # Not one value alone: the whole way, which raises the decoder's errors.
                value = loads(text)
            values[k] = value
            if type(value) not in _IMMUTABLE:
                unread.add(k)
        lifetime = None
        if meta:
            # Every stored key of metadata starts with META_PREFIX.
            check_meta(meta)
            lifetime = _lifetime(serializer, meta)
    except Exception as e:
        raise CorruptRecordError(f"a stored value cannot be decoded: {e!r}") from e
    # The record's data, never changed once made, serves as it is when it holds no metadata.
    serialized = {k: v for k, v in data.items() if k not in meta} if meta else data
    # In the fields' order: a call by keyword takes twice the instructions.
    created_at, expires_at = record.created_at, record.expires_at
    return StoredSession(
        sid, key, serialized, values, created_at, expires_at, lifetime, meta, {}, unread
    )


def changes(
    stored: StoredSession,
    values: t.Mapping[str, t.Any],
    assigned: t.Collection[str],
    serialize: t.Callable[[str, t.Any], str],
) -> tuple[dict[str, str], frozenset[str]]:
    """The serialized values that differ from ``stored``, and the keys deleted since.

    :param assigned: keys written through the dict API; any other key can
        differ only by a change in place of a mutable value the app was
        handed (one in ``stored.snapshots``).
    :raises TypeError: a value cannot be stored (from ``serialize``).
    """
    changed = {}
    serialized, snapshots = stored.serialized, stored.snapshots
    # Only a key written through the dict API, or one whose value can change
    # in place, can differ from what was loaded; the others keep their order.
    keys = [k for k in values if k in assigned or k in snapshots] if assigned else snapshots
    for key in keys:
        if key not in values:
            continue  # deleted: reported below
        value = values[key]
        if key not in assigned:
            snap = snapshots[key]
            if snap is not None and snapshot(value) == snap:
                # Not even a nested change: what was loaded, part for part.
                continue
        text = serialize(key, value)
        if serialized.get(key) != text:
            changed[key] = text
    if values.keys() >= serialized.keys():
        return changed, _NONE  # most saves delete no key: no set to build
    return changed, frozenset(serialized.keys() - values.keys())


class SessionState(t.Protocol):
    """What the store reads of a request's session (the HTTP layer's ``ServerSideSession``)."""

    stored: StoredSession | None
    has_token: bool
    token_verified: bool
    permanent_default: bool
    assigned: set[str]
    destroyed_sid: str | None
    regenerate_requested: bool
    renew_requested: bool
    requested_lifetime: t.Any

    @property
    def loaded(self) -> bool: ...

    @property
    def permanent(self) -> bool: ...

    @property
    def lifetime_set(self) -> bool: ...

    def current_values(self) -> dict[str, t.Any]: ...


def persistent(session: SessionState, lifetime: timedelta | None) -> bool:
    """Whether the cookie carries the expiry; asked only by a save that sets a cookie."""
    return session.permanent or lifetime is not None


def permanent_at_load(session: SessionState) -> bool:
    """Whether the session was permanent as it was loaded."""
    stored = session.stored
    if stored is None:
        return session.permanent_default
    return bool(stored.values.get(PERMANENT_KEY, session.permanent_default))


@dataclass(slots=True)
class SaveOutcome:
    """What a save means for the cookie.

    :param token: the token to set in the cookie, or None to leave it alone.
    :param expires_at: the session's expiry, for a permanent cookie.
    :param id_changed: the token is new to the client (new or regenerated id).
    :param delete_cookie: expire the client's cookie.
    :param persistent: the cookie carries ``expires_at`` rather than ending
        with the browser (a permanent session, or one with its own lifetime).
    """

    token: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None
    id_changed: bool = False
    delete_cookie: bool = False
    persistent: bool = False
