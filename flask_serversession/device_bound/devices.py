from __future__ import annotations

import typing as t
from datetime import datetime
from datetime import timedelta

from flask import request

from ..backends.base import Delta
from ..binding import ALGORITHMS
from ..binding import Binding
from ..binding import BINDING_KEY
from ..binding import CHALLENGE_LIFETIME
from ..binding import ProofError
from ..binding import read
from ..binding import Signer
from ..binding import StaleChallenge
from ..binding import text
from ..log import logger
from ..stored import StoredSession

if t.TYPE_CHECKING:
    from flask import Flask
    from flask import Response
    from flask.sessions import SessionInterface

    from ..store import SessionStore


#: The purpose of a refresh challenge given ahead, with a bound cookie.
_AHEAD = "refresh-ahead"


def _origin() -> str:
    return f"{request.scheme}://{request.host}"


def challenge_header(challenge: str, binding_id: str) -> str:
    """A ``Secure-Session-Challenge`` value: ``challenge`` for the binding ``binding_id``."""
    return f'"{challenge}";id="{binding_id}"'


class Devices:
    """The app's side of DBSC: the offer, the bound cookie and the session instructions.

    :param store: the app's session store, whose records keep the bindings.
    :param interface: the session interface, for the session cookie's name and attributes.
    :param signer: signs and checks challenges and bound cookies.
    :param base: where the endpoints are (``SERVERSESSION_DEVICE_BOUND_PATH``).
    :param refresh: the bound cookie's lifetime (``SERVERSESSION_DEVICE_BOUND_REFRESH``).
    """

    def __init__(
        self,
        store: SessionStore,
        interface: SessionInterface,
        signer: Signer,
        *,
        base: str,
        refresh: timedelta,
    ) -> None:
        self.store = store
        self.interface = interface
        self.signer = signer
        self.base = base
        self.refresh = refresh

    def binding(self, stored: StoredSession) -> Binding | None:
        """The binding of a loaded session; ValueError when its stored state is damaged."""
        return read(self.store.serializer, stored.meta)

    def cookie_name(self, app: Flask) -> str:
        """The bound cookie's name: the session cookie's, so that its prefix rules hold too."""
        return f"{self.interface.get_cookie_name(app)}-bound"

    def cookie_attributes(self, app: Flask) -> dict[str, t.Any]:
        """The bound cookie's attributes: the session cookie's, plus Secure and HttpOnly."""
        return {
            "domain": self.interface.get_cookie_domain(app),
            "path": self.interface.get_cookie_path(app),
            "secure": True,
            "httponly": True,
            "samesite": self.interface.get_cookie_samesite(app),
        }

    def attributes_text(self, app: Flask) -> str:
        """The bound cookie's attributes as ``Set-Cookie`` writes them, for the instructions."""
        attributes = self.cookie_attributes(app)
        parts = []
        if attributes["domain"]:
            parts.append(f"Domain={attributes['domain']}")
        parts += [f"Path={attributes['path']}", "Secure", "HttpOnly"]
        if attributes["samesite"]:
            parts.append(f"SameSite={attributes['samesite']}")
        return "; ".join(parts)

    def admits(self, app: Flask, stored: StoredSession, *, connected: bool) -> bool:
        """Whether the request brought a valid bound cookie for the bound session ``stored``,
        or none at all within :data:`~flask_serversession.binding.REGISTRATION_GRACE` of binding.

        :param connected: a Socket.IO event of a connection whose handshake was
            checked when it was made: the cookie it brought may have expired since.
        """
        try:
            binding = self.binding(stored)
        except ValueError as e:
            logger.error("Stored session %s has a damaged device binding: %s", stored.key, e)
            return False
        if binding is None:
            return True
        value = request.cookies.get(self.cookie_name(app))
        if value is None and binding.in_grace(self.signer.now()):
            # Sent before the registration's answer gave the browser its bound cookie.
            return True
        return self.signer.cookie_valid(binding.id, value, expired_ok=connected)

    def set_cookie(self, app: Flask, response: Response, binding: Binding) -> None:
        """Give the client a new bound cookie for ``binding``."""
        value = self.signer.cookie(binding.id, self.refresh)
        max_age = int(self.refresh.total_seconds())
        response.set_cookie(
            self.cookie_name(app), value, max_age=max_age, **self.cookie_attributes(app)
        )

    def delete_cookie(self, app: Flask, response: Response) -> None:
        """Expire the bound cookie, with the attributes it was set with."""
        response.delete_cookie(self.cookie_name(app), **self.cookie_attributes(app))

    def instructions(self, app: Flask, binding: Binding) -> dict[str, t.Any]:
        """The JSON session instructions of the DBSC draft for ``binding``."""
        return {
            "session_identifier": binding.id,
            "refresh_url": f"{self.base}/refresh",
            "scope": {"origin": _origin(), "include_site": False},
            "credentials": [
                {
                    "type": "cookie",
                    "name": self.cookie_name(app),
                    "attributes": self.attributes_text(app),
                }
            ],
        }

    def challenge_ahead(self, binding: Binding, accepted: int) -> str:
        """The ``Secure-Session-Challenge`` that gives the next refresh its challenge now.

        A browser keeps it and signs it into the refresh that renews the bound
        cookie given with it, which then takes one request instead of two (a
        403 with a challenge, then the proof).

        :param accepted: when the challenge just accepted was issued (ns): this
            one is issued after it, so that it passes once.
        """
        challenge = self.signer.challenge(_AHEAD, binding.id, after=accepted)
        return challenge_header(challenge, binding.id)

    def refresh_challenge_time(self, binding: Binding, challenge: str) -> int:
        """When the challenge of a refresh proof was issued (ns).

        One from a 403 is good for :data:`~flask_serversession.binding.CHALLENGE_LIFETIME`;
        one given ahead with a bound cookie until that cookie expires, and
        ``CHALLENGE_LIFETIME`` after.

        :raises ProofError: not a refresh challenge of this binding, or stale.
        """
        try:
            return self.signer.challenge_time("refresh", binding.id, challenge)
        except StaleChallenge:
            raise
        except ProofError:
            lifetime = self.refresh + CHALLENGE_LIFETIME
            return self.signer.challenge_time(_AHEAD, binding.id, challenge, lifetime)

    def offer(self, storage_key: str) -> str:
        """The ``Secure-Session-Registration`` header value for the session ``storage_key``."""
        challenge = self.signer.challenge("register", storage_key)
        algorithms = " ".join(ALGORITHMS)
        return f'({algorithms});path="{self.base}/register";challenge="{challenge}"'

    def bind(self, stored: StoredSession, binding: Binding) -> bool:
        """Keep ``binding`` in the session's record; False when it ended or is bound already."""
        current = self.store.backend.load(stored.key)
        if current is None or BINDING_KEY in current.data:
            return False
        return self._write(stored, current.expires_at, binding, None)

    def prove(self, stored: StoredSession, binding: Binding, issued: int) -> bool:
        """Accept a refresh over a challenge issued at ``issued``, once.

        False when the session ended, its binding changed, or a challenge
        issued at or after this one was accepted already.
        """
        current = self.store.backend.load(stored.key)
        if current is None:
            return False
        try:
            kept = read(self.store.serializer, current.data)
        except ValueError:
            return False
        if kept is None or kept.id != binding.id or issued <= kept.proved:
            return False
        updated = Binding(kept.id, kept.jwk, kept.alg, issued, kept.bound_at)
        return self._write(stored, current.expires_at, updated, current.data[BINDING_KEY])

    def _write(
        self, stored: StoredSession, expires_at: datetime, binding: Binding, held: str | None
    ) -> bool:
        """Write ``binding`` only while the record still holds the binding text ``held``.

        A compare-and-set in the backend: of two copies of one proof, on any
        workers, one is accepted and the other finds the binding changed.
        """
        settings = self.store.settings
        delta = Delta(
            expires_at,
            {BINDING_KEY: text(self.store.serializer, binding)},
            values=stored.values,
            max_size=settings.max_size,
            expect=(BINDING_KEY, held),
        )
        return self.store.users.update(stored, stored.values, delta, self.store.clock())
