from __future__ import annotations

import typing as t
from functools import partial

from flask import request
from flask.sessions import SessionInterface

from .cookie import CookieWriter
from .errors import BackendError
from .log import logger
from .purging import EveryNRequests
from .session import in_connected_socketio_event
from .session import in_socketio_event
from .session import ServerSideSession
from .store import SessionStore

if t.TYPE_CHECKING:
    from flask import Flask
    from flask import Request
    from flask import Response

    from .adoption import Adopter
    from .stored import Opened


# Headers of a view's response that a failed save must not let through.
_OUTCOME_HEADERS = (
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Content-Location",
    "Content-Range",
    "ETag",
    "Last-Modified",
    "Location",
    "Refresh",
    "Set-Cookie",
)


def has_header(response: Response, name: str) -> bool:
    """Whether ``response`` has a header ``name`` (lower case).

    Cheaper than ``name in response.headers``, which raises and catches an
    exception for a header that is not there: a save asks for every response.
    """
    return any(key.lower() == name for key, _value in response.headers)


def keep_private(response: Response) -> None:
    """Mark a response that sets or expires the session cookie ``private``.

    A shared cache (a CDN, a proxy) that stored it would hand one user's
    ``Set-Cookie`` to others. ``public`` goes; a response that already says
    ``private`` or ``no-store`` is left as it is.
    """
    if not has_header(response, "cache-control"):
        # What the parsed header would give, without parsing one that is not there.
        response.headers.add("Cache-Control", "private")
        return
    cache_control = response.cache_control
    if cache_control.private or cache_control.no_store:
        return
    cache_control.public = False
    cache_control.private = True


class ServerSessionInterface(SessionInterface):
    """Carries the session token in a cookie (or a header) and the data in a store.

    :param store: the app's session store.
    :param adopter: takes over sessions of the mechanism the app used before;
        None when ``SERVERSESSION_ADOPT_*`` are off.
    """

    #: The class of ``flask.session`` during a request.
    session_class = ServerSideSession

    def __init__(self, store: SessionStore, *, adopter: Adopter | None = None) -> None:
        self.store = store
        self.adopter = adopter
        self._purge_every = EveryNRequests(store.settings.purge_every)
        self._cookies = CookieWriter()

    def get_token(self, app: Flask, request: Request) -> str | None:
        """Return the token the client sent; a configured header wins over the cookie."""
        header_name = self.store.settings.header_name
        if header_name is not None:
            token = request.headers.get(header_name)
            if token:
                return token
        return request.cookies.get(self.get_cookie_name(app))

    def open_session(self, app: Flask, request: Request) -> ServerSideSession | None:
        if self.store.settings.sign_id and not app.secret_key:
            # As Flask's own session: reads see nothing, writes raise an error
            # that says the secret key is missing.
            return None
        token = self.get_token(app, request)
        adopter = self.adopter
        return self.session_class(
            partial(self._open, token),
            has_token=token is not None,
            permanent_default=self.store.settings.permanent,
            differs=self.store.differs,
            adoption=None if adopter is None else adopter.start(app, request, self.store),
        )

    def _open(self, token: str | None) -> Opened:
        # Run at the session's first use, when a Socket.IO event is known.
        try:
            return self.store.open(token, connected=in_connected_socketio_event())
        except BackendError as e:
            # The 503 says nothing of why; the log does, as for a failed save.
            logger.error("Loading the session failed: %s", e)
            raise

    def save_session(
        self,
        app: Flask,
        session: ServerSideSession,  # type: ignore[override]
        response: Response,
    ) -> None:
        self._purge_every.count(app, self.store)
        header_name = self.store.settings.header_name
        if session.accessed:
            if has_header(response, "vary"):
                response.vary.add("Cookie")
            else:
                # What adding to the parsed header would give, without parsing.
                response.headers.add("Vary", "Cookie")
            if header_name is not None:
                response.vary.add(header_name)

        try:
            # A session never loaded has nothing to save, wherever it runs.
            can_set_cookie = not session.loaded or not in_socketio_event()
            outcome = self.store.save(session, can_set_cookie=can_set_cookie)
            if session.adoption is not None:
                outcome = session.adoption.finish(outcome, lifetime_set=session.lifetime_set)
        except BackendError as e:
            logger.error("Saving the session failed: %s", e)
            self._replace_with_error(response, e)
            return
        name = self.get_cookie_name(app)
        if outcome.delete_cookie:
            response.delete_cookie(name, **self._cookie_attributes(app))
            keep_private(response)
            return
        if outcome.token is None:
            return
        keep_private(response)
        expires = outcome.expires_at if outcome.persistent else None
        self._cookies.set(response, name, outcome.token, expires, self._cookie_attributes(app))
        if header_name is not None and outcome.id_changed and name not in request.cookies:
            # A client that sent the cookie is a browser, whose page scripts
            # can read response headers but not an HttpOnly cookie.
            response.headers[header_name] = outcome.token

    def _cookie_attributes(self, app: Flask) -> dict[str, t.Any]:
        """The attributes the session cookie is set and expired with, from Flask's keys."""
        cookie: dict[str, t.Any] = {
            "domain": self.get_cookie_domain(app),
            "path": self.get_cookie_path(app),
            "secure": self.get_cookie_secure(app),
            "samesite": self.get_cookie_samesite(app),
            "httponly": self.get_cookie_httponly(app),
        }
        if app.config.get("SESSION_COOKIE_PARTITIONED"):
            cookie["partitioned"] = True
        return cookie

    @staticmethod
    def _replace_with_error(response: Response, error: BackendError) -> None:
        # The view's response claims a success whose session changes were
        # lost; the client must see the failure instead. Headers that describe
        # the view's body or claim its outcome go; the rest (CORS, Vary,
        # caching policy) stay, so a browser can still read the 503.
        error_response = error.get_response()
        for name in _OUTCOME_HEADERS:
            del response.headers[name]
        response.status = error_response.status
        response.content_type = error_response.content_type
        response.set_data(error_response.get_data())
