from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import typing as t
from binascii import b2a_base64

SecretKeys = t.Callable[[], t.Sequence[str | bytes]]

#: Why a token was refused (``session_token_rejected``): not of a token's shape.
MALFORMED = "malformed"
#: Why a token was refused: its signature is not one of the app's keys.
BAD_SIGNATURE = "bad_signature"
#: Why a token was refused: well formed and signed, but no session is stored for it.
UNKNOWN = "unknown"

_ID_LENGTH = 43
#: The 43 characters of a base64 sha256 digest without padding, and the dot before them.
_SIGNATURE_LENGTH = 44
_ID_PATTERN = "[A-Za-z0-9_-]{43}"
# A rotating secret (rotation.py): 128 bits in 22 characters, whose last one
# carries four unused bits. As for signatures below, only the canonical
# spelling is accepted, so a token has one form.
_SECRET_PATTERN = r"(?:\.[A-Za-z0-9_-]{21}[AQgw])?"
_UNSIGNED_TOKEN = re.compile(_ID_PATTERN + _SECRET_PATTERN)
# The last of the 43 characters of a base64 sha256 digest carries two unused bits.
_SIGNED_TOKEN = re.compile(
    rf"{_ID_PATTERN}{_SECRET_PATTERN}\.[A-Za-z0-9_-]{{42}}[AEIMQUYcgkosw048]"
)
#: The lengths of a signed token without and with a rotating secret.
_SIGNED_LENGTHS = (_ID_LENGTH + _SIGNATURE_LENGTH, _ID_LENGTH + 23 + _SIGNATURE_LENGTH)


def new_sid() -> str:
    """Return a new random session id: 256 bits, URL-safe."""
    return secrets.token_urlsafe(32)


def storage_key(sid: str) -> str:
    """Return the key a session is stored under: the sha256 of its id, never usable as a token."""
    return hashlib.sha256(sid.encode("ascii")).hexdigest()


_BLOCK = hashlib.sha256().block_size
_INNER_PAD = bytes(x ^ 0x36 for x in range(256))
_OUTER_PAD = bytes(x ^ 0x5C for x in range(256))
#: Standard base64 to its URL-safe alphabet.
_URL_SAFE = bytes.maketrans(b"+/", b"-_")


def _padded_states(key: bytes) -> tuple[t.Any, t.Any]:
    """The SHA-256 states HMAC starts its inner and outer hashes from, for a short key."""
    padded = key.ljust(_BLOCK, b"\0")
    return (
        hashlib.sha256(padded.translate(_INNER_PAD)),
        hashlib.sha256(padded.translate(_OUTER_PAD)),
    )


class _Signer:
    """Sign ids with HMAC-SHA256 under keys derived once per set of secret keys.

    The tokens are those of itsdangerous's ``Signer`` with this salt and
    sha256 (its "django-concat" key derivation, the signature in URL-safe
    base64 without padding), so tokens issued by earlier versions stay valid;
    deriving the keys once rather than for every token is what it saves.

    :param keys: the secret keys, oldest first; the last one signs.
    :param salt: separates these tokens from other uses of the same keys.
    """

    def __init__(self, keys: t.Sequence[bytes], salt: str) -> None:
        prefix = salt.encode() + b"signer"
        # Newest first: the SHA-256 states after the inner and outer padded
        # keys of HMAC (RFC 2104), so each token hashes only its own bytes.
        self._keys = [
            _padded_states(hashlib.sha256(prefix + key).digest()) for key in reversed(keys)
        ]
        # The last value signed or verified with the newest key, and its token:
        # a response that sets again the token its request brought (a renewed
        # persistent cookie) need not sign it again. Signing is deterministic,
        # so the token is the one signing would make.
        self._last = ("", "")

    @staticmethod
    def _signature(states: tuple[t.Any, t.Any], sid: str) -> str:
        inner, outer = states[0].copy(), states[1].copy()
        inner.update(sid.encode("ascii"))
        outer.update(inner.digest())
        # URL-safe base64 of the 32 bytes without the padding: 43 characters.
        return b2a_base64(outer.digest(), newline=False)[:43].translate(_URL_SAFE).decode()

    def sign(self, value: str) -> str:
        last_value, last_token = self._last
        if value == last_value:
            return last_token
        token = f"{value}.{self._signature(self._keys[0], value)}"
        self._last = (value, token)
        return token

    def unsign(self, token: str) -> str | None:
        """The signed value of a token of a signed length, or None when no key signed it."""
        value, signature = token[:-_SIGNATURE_LENGTH], token[1 - _SIGNATURE_LENGTH :]
        try:
            for key in self._keys:
                if hmac.compare_digest(signature, self._signature(key, value)):
                    if key is self._keys[0]:
                        self._last = (value, token)
                    return value
        except (UnicodeEncodeError, TypeError):
            # Characters that are not ASCII: no key signed these.
            pass
        return None


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
        self._cached: tuple[tuple[str | bytes, ...], _Signer] | None = None

    def _signer(self) -> _Signer | None:
        if not self.sign:
            return None
        given = tuple(self._secret_keys())
        cached = self._cached
        if cached is not None and cached[0] == given:
            return cached[1]
        keys = [k.encode() if isinstance(k, str) else k for k in given if k]
        if not keys:
            raise RuntimeError(
                "SECRET_KEY is not set: session tokens are signed with it. Set app.secret_key."
            )
        signer = _Signer(keys, self.salt)
        self._cached = (given, signer)
        return signer

    def token_for(self, sid: str, secret: str | None = None) -> str:
        """Return the token a client holds for ``sid`` and its rotating secret, if any."""
        value = sid if secret is None else f"{sid}.{secret}"
        signer = self._signer()
        if signer is None:
            return value
        return signer.sign(value)

    def sid_from(self, token: str | None) -> str | None:
        """Return the id in a well-formed, correctly signed token, or None."""
        return self.check(token)[0]

    def check(self, token: str | None) -> tuple[str | None, str | None]:
        """Return ``(id, None)`` for a good token, else ``(None, reason)``.

        The reason is :data:`MALFORMED` or :data:`BAD_SIGNATURE`; it is None
        when there is no token at all.
        """
        value, reason = self.verify(token)
        return (None, reason) if value is None else (value[:_ID_LENGTH], None)

    def parse(self, token: str | None) -> tuple[str | None, str | None, str | None]:
        """Return ``(id, rotating secret or None, None)`` for a good token, else
        ``(None, None, reason)`` as :meth:`check` gives it.

        .. versionadded:: 0.3
        """
        value, reason = self.verify(token)
        if value is None:
            return None, None, reason
        if len(value) == _ID_LENGTH:
            return value, None, None
        return value[:_ID_LENGTH], value[_ID_LENGTH + 1 :], None

    def verify(self, token: str | None) -> tuple[str | None, str | None]:
        """Return ``(signed value, None)`` for a good token, else ``(None, reason)``."""
        if not token:
            return None, None
        if not isinstance(token, str):
            return None, MALFORMED
        signer = self._signer()
        if signer is None:
            return (token, None) if _UNSIGNED_TOKEN.fullmatch(token) else (None, MALFORMED)
        if len(token) in _SIGNED_LENGTHS and token[-_SIGNATURE_LENGTH] == ".":
            value = signer.unsign(token)
            if value is not None:
                # Signed here, so of the right shape: the pattern is checked
                # only to tell a token refused why.
                return value, None
        return (None, BAD_SIGNATURE) if _SIGNED_TOKEN.fullmatch(token) else (None, MALFORMED)
