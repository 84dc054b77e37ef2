from __future__ import annotations

import hashlib
import re
import secrets
import typing as t

from itsdangerous import BadSignature
from itsdangerous import Signer

SecretKeys = t.Callable[[], t.Sequence[str | bytes]]

#: Why a token was refused (``session_token_rejected``): not of a token's shape.
MALFORMED = "malformed"
#: Why a token was refused: its signature is not one of the app's keys.
BAD_SIGNATURE = "bad_signature"
#: Why a token was refused: well formed and signed, but no session is stored for it.
UNKNOWN = "unknown"

_ID_PATTERN = "[A-Za-z0-9_-]{43}"
_UNSIGNED_TOKEN = re.compile(_ID_PATTERN)
# The last of the 43 characters of a base64 sha256 digest carries two unused
# bits; only the canonical spelling is accepted, so a token has one form.
_SIGNED_TOKEN = re.compile(rf"{_ID_PATTERN}\.[A-Za-z0-9_-]{{42}}[AEIMQUYcgkosw048]")


def new_sid() -> str:
    """Return a new random session id: 256 bits, URL-safe."""
    return secrets.token_urlsafe(32)


def storage_key(sid: str) -> str:
    """Return the key a session is stored under: the sha256 of its id, never usable as a token."""
    return hashlib.sha256(sid.encode("ascii")).hexdigest()


class Tokens:
    """Turn session ids into the tokens clients hold, and back.

    :param sign: sign tokens with the app's secret keys (``SERVERSESSION_SIGN_ID``).
    :param secret_keys: returns the keys, oldest first; the last one signs.
        It is called for every token, so keys set or rotated after ``init_app``
        take effect at once, as with Flask's own session.
    :param salt: separates these tokens from other uses of the same keys.
    """

    def __init__(self, *, sign: bool, secret_keys: SecretKeys, salt: str) -> None:
        self.sign = sign
        self.salt = salt
        self._secret_keys = secret_keys
        self._cached: tuple[tuple[bytes, ...], Signer] | None = None

    def _signer(self) -> Signer | None:
        if not self.sign:
            return None
        keys = tuple(k.encode() if isinstance(k, str) else k for k in self._secret_keys() if k)
        cached = self._cached
        if cached is not None and cached[0] == keys:
            return cached[1]
        if not keys:
            raise RuntimeError(
                "SECRET_KEY is not set: session tokens are signed with it. Set app.secret_key."
            )
        signer = Signer(list(keys), salt=self.salt, digest_method=hashlib.sha256)
        self._cached = (keys, signer)
        return signer

    def token_for(self, sid: str) -> str:
        """Return the token a client holds for ``sid``."""
        signer = self._signer()
        if signer is None:
            return sid
        return signer.sign(sid).decode("ascii")

    def sid_from(self, token: str | None) -> str | None:
        """Return the id in a well-formed, correctly signed token, or None."""
        return self.check(token)[0]

    def check(self, token: str | None) -> tuple[str | None, str | None]:
        """Return ``(id, None)`` for a good token, else ``(None, reason)``.

        The reason is :data:`MALFORMED` or :data:`BAD_SIGNATURE`; it is None
        when there is no token at all.
        """
        if not token:
            return None, None
        if not isinstance(token, str):
            return None, MALFORMED
        signer = self._signer()
        if signer is None:
            return (token, None) if _UNSIGNED_TOKEN.fullmatch(token) else (None, MALFORMED)
        if not _SIGNED_TOKEN.fullmatch(token):
            return None, MALFORMED
        try:
            return signer.unsign(token).decode("ascii"), None
        except BadSignature:
            return None, BAD_SIGNATURE
