from __future__ import annotations

import hashlib
import json
import re
import secrets
import typing as t
from dataclasses import dataclass
from datetime import datetime
from datetime import timezone

from flask.json.tag import TaggedJSONSerializer
from itsdangerous import BadSignature
from itsdangerous import Signer

from .backends.base import Backend
from .backends.base import CorruptRecordError
from .backends.base import Delta
from .backends.base import logger
from .backends.base import Record
from .config import Settings
from .errors import BackendError
from .errors import SessionExpiredError
from .errors import SessionNotFoundError
from .errors import SessionTooLargeError
from .session import ServerSideSession
from .session import StoredSession

_ID_PATTERN = "[A-Za-z0-9_-]{43}"
_UNSIGNED_TOKEN = re.compile(_ID_PATTERN)
_SIGNED_TOKEN = re.compile(rf"{_ID_PATTERN}\.[A-Za-z0-9_-]{{43}}")

# Values of these exact types cannot change without an assignment, so a save
# need not serialize them again to find out whether they changed.
_IMMUTABLE = frozenset({str, int, float, bool, type(None), bytes})


class SessionSerializer(TaggedJSONSerializer):
    """Flask's tagged JSON, with one fixed encoder instead of the app's provider.

    The stored format then does not depend on ``app.json``, and a value is
    encoded without a lookup of the current app. Types that Flask's provider
    would turn into strings (``Decimal``, ``date``, dataclasses) are refused,
    since they would not come back as they were stored.
    """

    def __init__(self) -> None:
        super().__init__()
        self._encoder = json.JSONEncoder(separators=(",", ":"), sort_keys=True)
        self._decoder = json.JSONDecoder(object_hook=self.untag)

    def dumps(self, value: t.Any) -> str:
        return self._encoder.encode(self.tag(value))

    def loads(self, value: str) -> t.Any:
        return self._decoder.decode(value)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class SaveOutcome:
    """What a save means for the cookie.

    :param token: the token to set in the cookie, or None to leave it alone.
    :param expires_at: the session's expiry, for a permanent cookie.
    :param id_changed: the token is new to the client (new or regenerated id).
    :param delete_cookie: expire the client's cookie.
    """

    token: str | None = None
    expires_at: datetime | None = None
    id_changed: bool = False
    delete_cookie: bool = False


_NOTHING = SaveOutcome()


class SessionStore:
    """Session policy: ids, token signing, lifetime, serialization and deltas.

    It sits between the session interface, which handles HTTP, and a
    :class:`~flask_serversession.backends.Backend`, which only stores records.

    :param backend: where records are kept.
    :param settings: the validated ``SERVERSESSION_*`` settings.
    :param secret_keys: signing keys, oldest first; the last one signs.
    """

    #: Turns one session value into text and back (Flask's tagged JSON).
    serializer: TaggedJSONSerializer = SessionSerializer()
    #: Separates tokens signed here from other uses of the same secret key.
    salt = "flask-serversession"
    #: Returns the current time as an aware UTC datetime.
    clock: t.Callable[[], datetime] = staticmethod(utcnow)

    def __init__(
        self, backend: Backend, settings: Settings, *, secret_keys: t.Sequence[str | bytes] = ()
    ) -> None:
        self.backend = backend
        self.settings = settings
        keys = [k.encode() if isinstance(k, str) else k for k in secret_keys]
        self._signer = (
            Signer(keys, salt=self.salt, digest_method=hashlib.sha256) if settings.sign_id else None
        )

    def new_sid(self) -> str:
        return secrets.token_urlsafe(32)

    def token_for(self, sid: str) -> str:
        """Return the token a client holds for ``sid``."""
        if self._signer is None:
            return sid
        return self._signer.sign(sid).decode("ascii")

    def sid_from(self, token: str | None) -> str | None:
        """Return the id in a well-formed, correctly signed token, or None."""
        if not token:
            return None
        if self._signer is None:
            return token if _UNSIGNED_TOKEN.fullmatch(token) else None
        if not _SIGNED_TOKEN.fullmatch(token):
            return None
        try:
            return self._signer.unsign(token).decode("ascii")
        except BadSignature:
            return None

    @staticmethod
    def storage_key(sid: str) -> str:
        return hashlib.sha256(sid.encode("ascii")).hexdigest()

    def _is_expired(self, record: Record, now: datetime) -> bool:
        if record.expires_at <= now:
            return True
        cap = self.settings.absolute_lifetime
        return cap is not None and record.created_at + cap <= now

    def _decode(self, sid: str, key: str, record: Record) -> StoredSession:
        try:
            values = {k: self.serializer.loads(v) for k, v in record.data.items()}
        except Exception as e:
            raise CorruptRecordError(f"a stored value cannot be decoded: {e!r}") from e
        return StoredSession(
            sid=sid,
            key=key,
            serialized=record.data,
            values=values,
            created_at=record.created_at,
            expires_at=record.expires_at,
        )

    def _read(self, sid: str) -> tuple[str, Record | None]:
        key = self.storage_key(sid)
        return key, self.backend.load(key)

    def open(self, token: str | None) -> StoredSession | None:
        """Load the live session a request's token names, or None.

        Bad tokens, unknown, expired and corrupt sessions all give None, so
        the request starts a fresh session; corruption is logged.
        """
        sid = self.sid_from(token)
        if sid is None:
            return None
        key, record = self._read(sid)
        if record is None or self._is_expired(record, self.clock()):
            return None
        try:
            return self._decode(sid, key, record)
        except CorruptRecordError as e:
            logger.error("Stored session %s is corrupt, starting a new one: %s", key, e)
            return None

    def fetch(self, token: str) -> StoredSession:
        """Load the live session ``token`` names, raising when there is none."""
        sid = self.sid_from(token)
        if sid is None:
            raise SessionNotFoundError("The token is malformed or badly signed.")
        try:
            key, record = self._read(sid)
        except CorruptRecordError as e:
            logger.error("Stored session %s is corrupt: %s", self.storage_key(sid), e)
            raise BackendError(f"The stored session is corrupt: {e}") from e
        if record is None:
            raise SessionNotFoundError("No session is stored for this token.")
        if self._is_expired(record, self.clock()):
            raise SessionExpiredError(f"The session expired at {record.expires_at.isoformat()}.")
        try:
            return self._decode(sid, key, record)
        except CorruptRecordError as e:
            logger.error("Stored session %s is corrupt: %s", key, e)
            raise BackendError(f"The stored session is corrupt: {e}") from e

    def serialize(self, key: str, value: t.Any) -> str:
        try:
            return self.serializer.dumps(value)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"Session key {key!r} holds a {type(value).__name__} value that cannot be"
                f" stored ({e}). Use dict, list, tuple, str, bytes, numbers, bool, None,"
                " datetime, UUID or Markup values."
            ) from e

    def _check_size(self, data: t.Mapping[str, str]) -> None:
        size = sum(len(k.encode()) + len(v.encode()) for k, v in data.items())
        if size > self.settings.max_size:
            raise SessionTooLargeError(
                f"The session would take {size} bytes, more than SERVERSESSION_MAX_SIZE"
                f" ({self.settings.max_size}). It was not saved; the stored session is unchanged."
            )

    def _first_expiry(self, now: datetime) -> datetime:
        expires_at = now + self.settings.expire_time
        cap = self.settings.absolute_lifetime
        return expires_at if cap is None else min(expires_at, now + cap)

    def renewed_expiry(self, stored: StoredSession, now: datetime) -> datetime:
        """Return the expiry after a renewal: never earlier, never past the cap."""
        expires_at = max(stored.expires_at, now + self.settings.renew_time)
        cap = self.settings.absolute_lifetime
        return expires_at if cap is None else min(expires_at, stored.created_at + cap)

    def _create(self, values: t.Mapping[str, t.Any], now: datetime) -> tuple[str, datetime]:
        data = {k: self.serialize(k, v) for k, v in values.items()}
        self._check_size(data)
        sid = self.new_sid()
        expires_at = self._first_expiry(now)
        self.backend.create(self.storage_key(sid), Record(data, now, expires_at, values))
        return sid, expires_at

    def _diff(
        self, stored: StoredSession, values: t.Mapping[str, t.Any], assigned: t.Container[str]
    ) -> tuple[dict[str, str], frozenset[str]]:
        changed = {}
        for key, value in values.items():
            if key in assigned or key not in stored.serialized or type(value) not in _IMMUTABLE:
                text = self.serialize(key, value)
                if stored.serialized.get(key) != text:
                    changed[key] = text
        return changed, frozenset(stored.serialized.keys() - values.keys())

    def save(self, session: ServerSideSession) -> SaveOutcome:
        """Write what the request changed and say what the cookie needs."""
        if session.destroyed_sid is not None:
            self.backend.delete(self.storage_key(session.destroyed_sid))
        if not session.loaded:
            return _NOTHING
        now = self.clock()
        values = session.copy()
        stored = session.stored

        if stored is None:
            if not values:
                return SaveOutcome(delete_cookie=session.has_token)
            sid, expires_at = self._create(values, now)
            return SaveOutcome(self.token_for(sid), expires_at, id_changed=True)

        if not values:
            self.backend.delete(stored.key)
            return SaveOutcome(delete_cookie=True)

        changed, deleted = self._diff(stored, values, session.assigned)
        renew = session.renew_requested or (
            self.settings.renew_on == "access"
            or (self.settings.renew_on == "modify" and bool(changed or deleted))
        )
        expires_at = self.renewed_expiry(stored, now) if renew else stored.expires_at

        if session.regenerate_requested:
            data = {k: v for k, v in stored.serialized.items() if k not in deleted}
            data.update(changed)
            self._check_size(data)
            sid = self.new_sid()
            record = Record(data, stored.created_at, expires_at, values)
            self.backend.create(self.storage_key(sid), record)
            self.backend.delete(stored.key)
            return SaveOutcome(self.token_for(sid), expires_at, id_changed=True)

        if changed or deleted:
            data = {k: v for k, v in stored.serialized.items() if k not in deleted}
            data.update(changed)
            self._check_size(data)
            delta = Delta(expires_at, changed, deleted, values)
            if not self.backend.update(stored.key, delta, now):
                return _NOTHING
        elif expires_at != stored.expires_at:
            if not self.backend.touch(stored.key, expires_at, now):
                return _NOTHING
        else:
            return _NOTHING

        if session.permanent and expires_at != stored.expires_at:
            return SaveOutcome(self.token_for(stored.sid), expires_at)
        return _NOTHING

    def create(self, values: t.Mapping[str, t.Any]) -> str:
        """Store a new session holding ``values``; return its token."""
        sid, _ = self._create(values, self.clock())
        return self.token_for(sid)

    def get(self, token: str) -> dict[str, t.Any]:
        return dict(self.fetch(token).values)

    def update(self, token: str, values: t.Mapping[str, t.Any]) -> None:
        """Replace the data of a live session and renew it."""
        stored = self.fetch(token)
        now = self.clock()
        data = {k: self.serialize(k, v) for k, v in values.items()}
        self._check_size(data)
        deleted = frozenset(stored.serialized.keys() - data.keys())
        delta = Delta(self.renewed_expiry(stored, now), data, deleted, values)
        if not self.backend.update(stored.key, delta, now):
            raise SessionNotFoundError("The session was deleted while it was being updated.")

    def renew(self, token: str) -> datetime:
        """Push the expiry of a live session; return the new expiry."""
        stored = self.fetch(token)
        now = self.clock()
        expires_at = self.renewed_expiry(stored, now)
        if expires_at != stored.expires_at and not self.backend.touch(stored.key, expires_at, now):
            raise SessionNotFoundError("The session was deleted while it was being renewed.")
        return expires_at

    def delete(self, token: str) -> None:
        """Delete the session ``token`` names, live or expired."""
        sid = self.sid_from(token)
        if sid is None:
            raise SessionNotFoundError("The token is malformed or badly signed.")
        key = self.storage_key(sid)
        try:
            found = self.backend.load(key) is not None
        except CorruptRecordError:
            found = True
        if not found:
            raise SessionNotFoundError("No session is stored for this token.")
        self.backend.delete(key)

    def purge_expired(self) -> int:
        return self.backend.purge_expired(self.clock())

    def count(self) -> int:
        return self.backend.count(self.clock())

    def items(self) -> t.Iterator[tuple[str, dict[str, t.Any]]]:
        """Yield ``(storage key, data)`` of each live session."""
        now = self.clock()
        for key, record in self.backend.items(now):
            if self._is_expired(record, now):
                continue
            try:
                values = {k: self.serializer.loads(v) for k, v in record.data.items()}
            except Exception as e:
                logger.error("Stored session %s is corrupt, skipped: %r", key, e)
                continue
            yield key, values

    def clear(self) -> int:
        return self.backend.clear()
