from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import typing as t
from base64 import urlsafe_b64encode

SecretKeys = t.Callable[[], t.Sequence[str | bytes]]

#: Why a token was refused (``session_token_rejected``): not of a token's shape.
MALFORMED = "malformed"
#: Why a token was refused: its signature is not one of the app's keys.
BAD_SIGNATURE = "bad_signature"
#: Why a token was refused: well formed and signed, but no session is stored for it.
UNKNOWN = "unknown"

_ID_LENGTH = 43
#: An id, a dot and the 43 characters of a base64 sha256 digest without padding.
_SIGNED_LENGTH = 2 * _ID_LENGTH + 1
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


_BLOCK = hashlib.sha256().block_size
_INNER_PAD = bytes(x ^ 0x36 for x in range(256))
_OUTER_PAD = bytes(x ^ 0x5C for x in range(256))


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

    @staticmethod
    def _signature(states: tuple[t.Any, t.Any], sid: str) -> str:
        inner, outer = states[0].copy(), states[1].copy()
        inner.update(sid.encode("ascii"))
        outer.update(inner.digest())
        return urlsafe_b64encode(outer.digest()).rstrip(b"=").decode("ascii")

    def sign(self, sid: str) -> str:
        return f"{sid}.{self._signature(self._keys[0], sid)}"

    def unsign(self, token: str) -> str | None:
        """The id of a token of the signed length, or None when no key signed it."""
        sid, signature = token[:_ID_LENGTH], token[_ID_LENGTH + 1 :]
        try:
            for key in self._keys:
                if hmac.compare_digest(signature, self._signature(key, sid)):
                    return sid
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

    def secret(self) -> bytes:
        """The signing key (the newest), from which rotated ids are derived."""
        keys = [k.encode() if isinstance(k, str) else k for k in self._secret_keys() if k]
        if not keys:
            raise RuntimeError(
                "SECRET_KEY is not set: rotated session ids are derived from it."
                " Set app.secret_key."
            )
        return keys[-1]

    def token_for(self, sid: str) -> str:
        """Return the token a client holds for ``sid``."""
        signer = self._signer()
        if signer is None:
            return sid
        return signer.sign(sid)

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
        if len(token) == _SIGNED_LENGTH and token[_ID_LENGTH] == ".":
            sid = signer.unsign(token)
            if sid is not None:
                # Signed here, so of the right shape: the pattern is checked
                # only to tell a token refused why.
                return sid, None
        return (None, BAD_SIGNATURE) if _SIGNED_TOKEN.fullmatch(token) else (None, MALFORMED)
