from __future__ import annotations

import typing as t
from dataclasses import replace
from datetime import datetime
from datetime import timedelta
from datetime import timezone

from . import rotation
from .backends.base import Backend
from .backends.base import check_size
from .backends.base import CorruptRecordError
from .backends.base import data_size
from .backends.base import Delta
from .backends.base import Record
from .config import Settings
from .errors import BackendError
from .errors import SessionExpiredError
from .errors import SessionNotFoundError
from .lifetime import Lifetimes
from .log import logger
from .regeneration import regenerate
from .serialization import ACCEPTED
from .serialization import check_key
from .serialization import SessionSerializer
from .signals import send
from .signals import session_created
from .signals import session_destroyed
from .signals import session_expired
from .signals import session_token_rejected
from .stored import changes
from .stored import decode
from .stored import decode_values
from .stored import LIFETIME_KEY
from .stored import Opened
from .stored import permanent_at_load
from .stored import PERMANENT_KEY
from .stored import persistent
from .stored import SaveOutcome
from .stored import SessionState
from .stored import StoredSession
from .tokens import new_sid
from .tokens import SecretKeys
from .tokens import storage_key
from .tokens import Tokens
from .tokens import UNKNOWN
from .users import Users


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


_NOTHING = SaveOutcome()


class SessionStore:
    """Session policy: ids, token signing, lifetime, serialization and deltas.

    It sits between the session interface, which handles HTTP, and a
    :class:`~flask_serversession.backends.Backend`, which only stores records.

    :param backend: where records are kept.
    :param settings: the validated ``SERVERSESSION_*`` settings.
    :param secret_keys: returns the signing keys, oldest first; the last one
        signs. It is called for every token, so keys set or rotated after
        ``init_app`` take effect at once, as with Flask's own session.
    """

    #: Turns one session value into text and back (tagged JSON).
    serializer = SessionSerializer()
    #: Separates tokens signed here from other uses of the same secret key.
    salt = "flask-serversession"
    #: Returns the current time as an aware UTC datetime.
    clock: t.Callable[[], datetime] = staticmethod(utcnow)

    def __init__(
        self, backend: Backend, settings: Settings, *, secret_keys: SecretKeys = tuple
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.tokens = Tokens(sign=settings.sign_id, secret_keys=secret_keys, salt=self.salt)
        #: When sessions expire.
        self.lifetimes = Lifetimes(
            settings.expire_time, settings.renew_time, settings.absolute_lifetime
        )
        #: The users' side: who a session belongs to, last seen, revocation.
        self.users = Users(self)

    def new_sid(self) -> str:
        return new_sid()

    def token_for(self, sid: str, secret: str | None = None) -> str:
        """Return the token a client holds for ``sid`` (and its rotating secret)."""
        return self.tokens.token_for(sid, secret)

    def sid_from(self, token: str | None) -> str | None:
        """Return the id in a well-formed, correctly signed token, or None."""
        return self.tokens.sid_from(token)

    storage_key = staticmethod(storage_key)

    def check_meta(self, data: t.Mapping[str, str]) -> None:
        """Raise ValueError when stored metadata is not of the shape written here."""
        self.users.check_values(data)
        rotation.check(self.serializer, data)

    def open(self, token: str | None, *, connected: bool = False) -> Opened:
        """Load the live session a request's token names.

        Bad tokens, unknown, expired and damaged sessions all open none, so
        the request starts a fresh session; damage is logged.

        :param connected: a Socket.IO connection made earlier brought the token.
        """
        sid, secret, rejected = self.tokens.parse(token)
        if sid is None:
            return Opened(rejected=rejected)
        key = self.storage_key(sid)
        try:
            record = self.backend.load(key)
            if record is None:
                return Opened(verified=True, rejected=UNKNOWN)
            if self.lifetimes.is_expired(record, self.clock()):
                send(session_expired, storage_key=key)
                return Opened(verified=True)
            stored = decode(self.serializer, sid, key, record, self.check_meta)
        except CorruptRecordError as e:
            logger.error("Stored session %s is damaged, starting a new one: %s", key, e)
            return Opened(verified=True)
        if secret is None and rotation.ROTATION_KEY not in stored.meta:
            return Opened(stored, verified=True)
        return rotation.admit(self, stored, secret, self.clock(), connected=connected)

    def _api_sid(self, token: str) -> str:
        """The id of a token given to the API; a bad one is reported and refused."""
        sid, rejected = self.tokens.check(token)
        if sid is None:
            send(session_token_rejected, reason=rejected)
            raise SessionNotFoundError("The token is malformed or badly signed.")
        return sid

    def fetch(self, token: str) -> StoredSession:
        """Load the live session ``token`` names, raising when there is none."""
        sid, secret, _ = self.tokens.parse(token)
        sid = self._api_sid(token) if sid is None else sid
        key = self.storage_key(sid)
        try:
            record = self.backend.load(key)
            if record is None:
                send(session_token_rejected, reason=UNKNOWN)
                raise SessionNotFoundError("No session is stored for this token.")
            if self.lifetimes.is_expired(record, self.clock()):
                send(session_expired, storage_key=key)
                raise SessionExpiredError(
                    f"The session expired at {record.expires_at.isoformat()}."
                )
            stored = decode(self.serializer, sid, key, record, self.check_meta)
        except CorruptRecordError as e:
            logger.error("Stored session %s is damaged: %s", key, e)
            raise BackendError(f"The stored session {key} is damaged: {e}") from e
        if secret is None and rotation.ROTATION_KEY not in stored.meta:
            return stored
        opened = rotation.admit(self, stored, secret, self.clock(), connected=False)
        if opened.stored is None:
            if opened.rejected is not None:
                send(session_token_rejected, reason=opened.rejected)
            raise SessionNotFoundError("No session is stored for this token.")
        return opened.stored

    def serialize(self, key: t.Any, value: t.Any) -> str:
        """Return the stored text of one session value.

        :raises TypeError: the key or the value would not come back as it is.
        """
        check_key(key)
        self.users.check(key, value)
        try:
            return self.serializer.dumps(value)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"Session key {key!r} holds a {type(value).__name__} value that cannot be stored"
                f" as it is: {e}."
                f" Use {ACCEPTED} values."
            ) from e

    def _serialize_all(self, values: t.Mapping[str, t.Any]) -> dict[str, str]:
        data = {k: self.serialize(k, v) for k, v in values.items()}
        check_size(0, data_size(data), self.settings.max_size)
        return data

    def renewed_expiry(self, stored: StoredSession, now: datetime) -> datetime:
        """Return the expiry of ``stored`` after a renewal now."""
        return self.lifetimes.renewed(stored.expires_at, stored.created_at, stored.lifetime, now)

    def _lifetime_text(self, lifetime: timedelta) -> str:
        return self.serializer.dumps(lifetime.total_seconds())

    def _create(
        self, values: t.Mapping[str, t.Any], now: datetime, lifetime: timedelta | None = None
    ) -> tuple[str, datetime]:
        data = self._serialize_all(values)
        if lifetime is not None:
            data[LIFETIME_KEY] = self._lifetime_text(lifetime)
        sid = self.new_sid()
        expires_at = self.lifetimes.started(now, now, lifetime)
        key = self.storage_key(sid)
        record = self.users.record(Record(data, now, expires_at, values), now)
        self.backend.create(key, record)
        send(session_created, storage_key=key)
        self.users.enforce_limit(key, record.user, now)
        return sid, expires_at

    def differs(self, session: SessionState) -> bool:
        """Whether a loaded session now differs from what was loaded, nested changes included."""
        values = session.current_values()
        stored = session.stored
        if stored is None:
            return bool(values)
        try:
            changed, deleted = changes(stored, values, session.assigned, self.serialize)
        except TypeError:
            # A value that cannot be stored is a change; the save will say why.
            return True
        return bool(changed or deleted)

    def _delete(self, key: str) -> None:
        self.backend.delete(key)
        send(session_destroyed, storage_key=key)

    def save(self, session: SessionState, *, can_set_cookie: bool = True) -> SaveOutcome:
        """Write what the request changed and say what the cookie needs.

        :param can_set_cookie: False where no response carries a cookie (a
            Flask-SocketIO event): a new session is then not stored, nor rotated.
        """
        outcome = self._save(session, can_set_cookie)
        stored = session.stored
        if stored is None or not stored.handed_over or outcome.token or outcome.delete_cookie:
            return outcome
        # Opened through a token from before a rotation: hand over the current one.
        keeps_expiry = session.permanent or stored.lifetime is not None
        expires_at = outcome.expires_at or stored.expires_at
        token = self.token_for(stored.sid, stored.secret)
        return SaveOutcome(token, expires_at, True, persistent=keeps_expiry)

    def _save(self, session: SessionState, can_set_cookie: bool) -> SaveOutcome:
        if session.destroyed_sid is not None:
            self._delete(self.storage_key(session.destroyed_sid))
        if not session.loaded:
            return _NOTHING
        now = self.clock()
        values = session.current_values()
        stored = session.stored
        # The permanence flag alone is no reason to store a session.
        empty = len(values) == (PERMANENT_KEY in values)
        lifetime_set = session.lifetime_set
        lifetime = stored.lifetime if stored is not None else None
        if lifetime_set:
            lifetime = session.requested_lifetime

        if stored is None:
            if empty:
                # A cookie that neither this store nor the adopted mechanism
                # could verify is left alone.
                return SaveOutcome(delete_cookie=session.token_verified)
            if not can_set_cookie:
                logger.warning(
                    "A Socket.IO event handler wrote to a session that is not stored; it is"
                    " not saved, since no cookie can carry a new session id to the client."
                )
                return _NOTHING
            sid, expires_at = self._create(values, now, lifetime)
            return SaveOutcome(
                self.token_for(sid),
                expires_at,
                id_changed=True,
                persistent=persistent(session, lifetime),
            )

        if empty:
            self._delete(stored.key)
            return SaveOutcome(delete_cookie=True)

        changed, deleted = changes(stored, values, session.assigned, self.serialize)
        if lifetime_set:
            if lifetime != stored.lifetime:
                if lifetime is None:
                    deleted |= {LIFETIME_KEY}
                else:
                    changed[LIFETIME_KEY] = self._lifetime_text(lifetime)
            expires_at = self.lifetimes.started(now, stored.created_at, lifetime)
        else:
            renew = session.renew_requested or (
                self.settings.renew_on == "access"
                or (self.settings.renew_on == "modify" and bool(changed or deleted))
            )
            expires_at = self.renewed_expiry(stored, now) if renew else stored.expires_at

        if self.settings.rotate_every is not None or rotation.ROTATION_KEY in stored.meta:
            rotated = rotation.before_save(
                self, session, stored, changed, deleted, expires_at, values, now, can_set_cookie
            )
            if rotated is not None:
                return replace(rotated, persistent=persistent(session, lifetime))

        if session.regenerate_requested:
            # Sign-in restarts both timeouts (SP 800-63B-4 5.2); a lifetime set now holds.
            chosen = self.lifetimes.started(now, now, lifetime) if lifetime_set else None
            outcome = regenerate(self, stored, changed, deleted, expires_at, chosen, values, now)
            return replace(outcome, persistent=persistent(session, lifetime))

        if changed or deleted:
            delta = Delta(expires_at, changed, deleted, values, self.settings.max_size)
            if not self.users.update(stored, values, delta, now):
                return _NOTHING
        elif self.users.seen_due(stored, now):
            # Only the last-seen time: never refused for size, as a read.
            if not self.users.update(stored, values, Delta(expires_at, values=values), now):
                return _NOTHING
        elif expires_at != stored.expires_at:
            if not self.backend.touch(stored.key, expires_at, now):
                return _NOTHING
        else:
            return _NOTHING

        was_persistent = permanent_at_load(session) or stored.lifetime is not None
        now_persistent = persistent(session, lifetime)
        if now_persistent != was_persistent or (now_persistent and expires_at != stored.expires_at):
            token = self.token_for(stored.sid, stored.secret)
            return SaveOutcome(token, expires_at, persistent=now_persistent)
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
        data = self._serialize_all(values)
        deleted = frozenset(stored.serialized.keys() - data.keys())
        expires_at = self.renewed_expiry(stored, now)
        delta = Delta(expires_at, data, deleted, values, self.settings.max_size)
        if not self.users.update(stored, values, delta, now):
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
        key = self.storage_key(self._api_sid(token))
        try:
            found = self.backend.load(key) is not None
        except CorruptRecordError:
            found = True
        if not found:
            raise SessionNotFoundError("No session is stored for this token.")
        self._delete(key)

    def purge_expired(self) -> int:
        return self.backend.purge_expired(self.clock(), longest_lifetime=self.lifetimes.longest)

    def count(self) -> int:
        return self.backend.count(self.clock())

    def items(self) -> t.Iterator[tuple[str, dict[str, t.Any]]]:
        """Yield ``(storage key, data)`` of each live session."""
        now = self.clock()
        for key, record in self.backend.items(now):
            if self.lifetimes.is_expired(record, now):
                continue
            try:
                values, _lifetime = decode_values(self.serializer, record.data, self.check_meta)
            except CorruptRecordError as e:
                logger.error("Stored session %s is damaged, skipped: %s", key, e)
                continue
            yield key, values

    def clear(self) -> int:
        return self.backend.clear()
