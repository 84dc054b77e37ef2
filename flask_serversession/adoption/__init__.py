from __future__ import annotations

import typing as t
from dataclasses import dataclass
from dataclasses import replace
from datetime import datetime
from datetime import timedelta

from flask.sessions import SecureCookieSessionInterface
from itsdangerous import BadData

from ..extras import require
from ..lifetime import LONGEST_LIFETIME
from ..log import logger
from ..stored import is_meta
from ..stored import PERMANENT_KEY
from ..stored import SaveOutcome

if t.TYPE_CHECKING:
    from flask import Flask
    from flask import Request

    from ..store import SessionStore


@dataclass(frozen=True)
class Found:
    """A session found under the mechanism the app used before.

    :param values: its data, as that mechanism handed it to the app.
    :param discard: removes it from the old store once its data is saved
        here; None when nothing is stored (a cookie session).
    :param expires_at: when it would have expired under the old mechanism,
        aware UTC; None when that is not known.

    .. versionchanged:: 0.3
        The ``expires_at`` parameter.
    """

    values: t.Mapping[t.Any, t.Any]
    discard: t.Callable[[], None] | None = None
    expires_at: datetime | None = None


class Source(t.Protocol):
    """A mechanism the app used before, which a request's cookie may name a session of."""

    #: How logs name one of its sessions.
    name: str

    def find(self, app: Flask, cookie: str) -> Found | None:
        """Return the session ``cookie`` names, or None; never raise for a bad cookie."""


class CookieSessionSource:
    """Flask's own signed cookie session, verified exactly as Flask verifies it."""

    name = "Flask cookie session"

    def __init__(self) -> None:
        #: Verifies and reads the cookie: salt, serializer, keys and max age are Flask's.
        self.interface = SecureCookieSessionInterface()

    def find(self, app: Flask, cookie: str) -> Found | None:
        serializer = self.interface.get_signing_serializer(app)
        if serializer is None:
            return None
        lifetime = app.permanent_session_lifetime
        try:
            data, signed_at = serializer.loads(
                cookie, max_age=int(lifetime.total_seconds()), return_timestamp=True
            )
        except BadData:
            return None
        # Flask accepts the cookie until its signature is this old.
        return Found(data, expires_at=signed_at + lifetime) if isinstance(data, dict) else None


class Adoption:
    """One request's take-over of an old session, done when the session is first used.

    :param sources: the mechanisms to look in, in order.
    :param app: the app of the request.
    :param cookie: the value of the request's session cookie.
    :param store: the store the data moves to.
    """

    def __init__(
        self, sources: t.Sequence[Source], app: Flask, cookie: str, store: SessionStore
    ) -> None:
        self._sources = sources
        self._app = app
        self._cookie = cookie
        self._store = store
        self._found: Found | None = None

    def load(self) -> dict[str, t.Any]:
        """Return the data of the old session the cookie names; empty when there is none."""
        for source in self._sources:
            found = source.find(self._app, self._cookie)
            if found is None:
                continue
            values = adoptable(found.values, self._store, source.name)
            if values:
                self._found = found
                logger.debug("Adopted a %s into a new session (%d keys).", source.name, len(values))
            return values
        return {}

    def finish(self, outcome: SaveOutcome, *, lifetime_set: bool = False) -> SaveOutcome:
        """Give the new session the adopted one's expiry, then remove the adopted one.

        Call it once the save succeeded, with what the save means for the
        cookie; returns it with the expiry kept. A lifetime the request set
        (``session.set_lifetime``) is left as it is.

        .. versionchanged:: 0.3
            Keeps the adopted session's expiry: adoption never shortens a session.
        """
        found, self._found = self._found, None
        if found is None:
            return outcome
        if not lifetime_set and found.expires_at is not None:
            outcome = kept_expiry(self._store, outcome, found.expires_at)
        if found.discard is not None:
            found.discard()
        return outcome


class Adopter:
    """Finds, for each request, a session of the mechanisms the app used before.

    :param sources: the mechanisms to look in, in order.
    """

    def __init__(self, sources: t.Sequence[Source]) -> None:
        self.sources = tuple(sources)

    def start(self, app: Flask, request: Request, store: SessionStore) -> Adoption | None:
        """Prepare the take-over for ``request``; None when it carries no session cookie.

        Costs nothing until the session is used: the session calls
        :meth:`Adoption.load` only when no stored session answers its token.
        """
        cookie = request.cookies.get(app.config["SESSION_COOKIE_NAME"])
        if not cookie:
            return None
        return Adoption(self.sources, app, cookie, store)


def adoptable(
    values: t.Mapping[t.Any, t.Any], store: SessionStore, source: str
) -> dict[str, t.Any]:
    """Return the part of an old session's data that the store can hold.

    A key whose value cannot be stored as it is is left out with a warning
    rather than costing the user the rest (their sign-in, most of all). Data
    larger than ``SERVERSESSION_MAX_SIZE`` is not adopted at all. Flask's
    ``_permanent`` flag is kept as the old mechanism meant it. Logs name keys
    and types, never values.
    """
    kept: dict[str, t.Any] = {}
    size = 0
    for key, value in values.items():
        if isinstance(key, str) and is_meta(key):
            logger.warning("The %s key %r is not adopted: the name is reserved.", source, key)
            continue
        try:
            text = store.serialize(key, value)
        except TypeError:
            logger.warning(
                "The %s key %r is not adopted: its %s value cannot be stored.",
                source,
                key,
                type(value).__name__,
            )
            continue
        kept[key] = value
        size += len(key.encode()) + len(text.encode())
    if size > store.settings.max_size:
        logger.warning(
            "A %s of %d bytes is not adopted: it is larger than SERVERSESSION_MAX_SIZE (%d).",
            source,
            size,
            store.settings.max_size,
        )
        return {}
    # Absent means not permanent, in Flask's session and in Flask-Session.
    permanent = bool(kept.pop(PERMANENT_KEY, False))
    if kept and permanent != store.settings.permanent:
        kept[PERMANENT_KEY] = permanent
    return kept


def kept_expiry(store: SessionStore, outcome: SaveOutcome, expires_at: datetime) -> SaveOutcome:
    """Move a newly adopted session's expiry to ``expires_at`` when that is later.

    The old expiry is kept up to the absolute cap and 400 days from now (the
    longest a browser keeps a cookie), so switching never shortens a session.
    """
    if outcome.token is None or not outcome.id_changed or outcome.expires_at is None:
        return outcome
    now = store.clock()
    kept = store.lifetimes.capped(min(expires_at, now + LONGEST_LIFETIME), now)
    sid = store.sid_from(outcome.token)
    if kept <= outcome.expires_at + timedelta(seconds=1) or sid is None:
        return outcome
    if not store.backend.touch(store.storage_key(sid), kept, now):
        return outcome
    return replace(outcome, expires_at=kept)


def build_adopter(app: Flask, *, cookie_sessions: bool, flask_session: bool) -> Adopter | None:
    """Return the adopter that ``SERVERSESSION_ADOPT_*`` ask for, or None when both are off.

    :raises ConfigError: Flask-Session's ``SESSION_*`` keys do not name a
        store that can be read.
    """
    sources: list[Source] = []
    if cookie_sessions:
        sources.append(CookieSessionSource())
    if flask_session:
        require("msgspec", key="SERVERSESSION_ADOPT_FLASK_SESSION", value=True)
        from .flask_session import source_from_config

        sources.append(source_from_config(app.config))
    return Adopter(sources) if sources else None
