from __future__ import annotations

import typing as t

from flask import current_app
from flask import request

from ..binding import BINDING_KEY
from ..interface import ServerSessionInterface
from ..session import in_connected_socketio_event
from ..session import ServerSideSession
from ..signals import send
from ..signals import session_binding_failed
from ..stored import Opened
from ..tokens import UNKNOWN
from .devices import Devices

if t.TYPE_CHECKING:
    from flask import Flask
    from flask import Response

    from ..adoption import Adopter
    from ..binding import Signer
    from ..store import SessionStore

#: The response header that offers a browser to bind the session.
OFFER_HEADER = "Secure-Session-Registration"


def _cookie_value(response: Response, name: str) -> str | None:
    """The value a response sets cookie ``name`` to, if it sets it."""
    for header in response.headers.getlist("Set-Cookie"):
        cookie_name, _, rest = header.partition("=")
        if cookie_name == name:
            return rest.split(";", 1)[0].strip('"') or None
    return None


class DeviceBoundInterface(ServerSessionInterface):
    """The session interface of an app with ``SERVERSESSION_DEVICE_BOUND``.

    A bound session opens only with its bound cookie; a sign-in over HTTPS
    offers the browser to bind its session. Apps without the setting use
    :class:`~flask_serversession.interface.ServerSessionInterface` itself,
    whose request path this leaves as it is.

    .. versionadded:: 0.3
    """

    def __init__(
        self, store: SessionStore, *, adopter: Adopter | None = None, signer: Signer
    ) -> None:
        super().__init__(store, adopter=adopter)
        settings = store.settings
        #: The offer, the bound cookie and the bindings kept in records.
        self.devices = Devices(
            store,
            self,
            signer,
            base=settings.device_bound_path,
            refresh=settings.device_bound_refresh,
        )

    def _open(self, token: str | None) -> Opened:
        opened = super()._open(token)
        stored = opened.stored
        if stored is None or BINDING_KEY not in stored.meta:
            return opened
        connected = in_connected_socketio_event()
        if self.devices.admits(current_app, stored, connected=connected):
            return opened
        # As an unknown token, whose cookie is left alone: the browser that
        # holds the key refreshes its bound cookie and comes back with it.
        send(session_binding_failed, storage_key=stored.key)
        return Opened(rejected=UNKNOWN)

    def save_session(
        self,
        app: Flask,
        session: ServerSideSession,  # type: ignore[override]
        response: Response,
    ) -> None:
        super().save_session(app, session, response)
        if session.destroyed_sid is not None:
            name = self.devices.cookie_name(app)
            if name in request.cookies:
                self.devices.delete_cookie(app, response)
        if session.regenerate_requested and request.is_secure:
            self._offer(app, session, response)

    def _offer(self, app: Flask, session: ServerSideSession, response: Response) -> None:
        """Offer DBSC on the response of a sign-in, unless bound already or an API client's.

        A client that sends no token yet may be either; one without DBSC ignores the offer.
        """
        stored = session.stored
        if stored is not None and BINDING_KEY in stored.meta:
            # The binding moved to the new id with the data.
            return
        header_name = self.store.settings.header_name
        if header_name is not None and request.headers.get(header_name):
            # An API client that holds its token in the header: nothing to bind.
            return
        token = _cookie_value(response, self.get_cookie_name(app))
        sid = self.store.sid_from(token)
        if sid is None:
            return
        response.headers[OFFER_HEADER] = self.devices.offer(self.store.storage_key(sid))
