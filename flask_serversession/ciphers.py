"""The keys of ``SERVERSESSION_ENCRYPTION_KEY`` and the AES-256-GCM sealing of stored text.

Every stored value is sealed on its own with a fresh random 96-bit nonce.
The associated data binds it to the session's storage key and to its own
key name, so a value copied to another session or another key does not
open. Each sealed text names the key that sealed it, so opening tries no
key at random; the current key seals, the fallbacks only open.

A sealed text is ``~`` (which no JSON text starts with), the key's 8
character id, then ``base64(nonce + ciphertext + tag)``.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import os
import typing as t
from base64 import b64decode
from base64 import urlsafe_b64encode
from binascii import a2b_base64
from binascii import b2a_base64

from .errors import ConfigError

#: What every sealed text starts with; tagged JSON text never does.
PREFIX = "~"
_KEY_ID_LENGTH = 8
# Where the base64 body of a sealed text starts.
_BODY = 1 + _KEY_ID_LENGTH
_NONCE = 12
_KEY_BYTES = 32
# Separates the uses of one key, so the cipher key, the key id and the user
# index key are never the same bytes.
_VALUES = b"flask-serversession values"
_KEY_ID = b"flask-serversession key id"
_INDEX = b"flask-serversession user index"
_AAD_VERSION = b"fss-aead-1\x00"
_HEX = frozenset("0123456789abcdefABCDEF")

GENERATE = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


class SealError(ValueError):
    """A sealed text does not open: its key is unknown, or it was changed or moved."""


def _derive(key: bytes, use: bytes) -> bytes:
    """A 32-byte subkey of ``key`` for one use (HKDF-SHA256)."""
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=SHA256(), length=_KEY_BYTES, salt=None, info=use).derive(key)


def read_key(value: t.Any, setting: str) -> bytes:
    """Return the 32 bytes a key setting holds: raw bytes, 64 hex digits or (urlsafe) base64.

    :raises ConfigError: naming ``setting``, never showing the key.
    """
    key: bytes | None = None
    if isinstance(value, (bytes, bytearray)):
        key = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        # Even-length text of hex digits is hex (no base64 key of 32 bytes is).
        if text and len(text) % 2 == 0 and set(text) <= _HEX:
            key = bytes.fromhex(text)
        else:
            try:
                padded = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
                key = b64decode(padded, validate=True)
            except (binascii.Error, ValueError):
                key = None
    if key is None or len(key) != _KEY_BYTES:
        what = (
            f"{len(key)} bytes" if key is not None else f"a {type(value).__name__} of no known form"
        )
        raise ConfigError(
            f"{setting} is not valid: it holds {what}, and a key is 32 random bytes (as"
            " bytes, 64 hex digits or base64 text). Make one with"
            f" {GENERATE}."
        )
    return key


class _Key:
    __slots__ = ("decrypt", "encrypt", "id", "index")

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        aead = AESGCM(_derive(key, _VALUES))
        self.encrypt = aead.encrypt
        self.decrypt = aead.decrypt
        self.id = urlsafe_b64encode(_derive(key, _KEY_ID)[:6]).decode("ascii")
        self.index = _derive(key, _INDEX)


class Keyring:
    """The current key, which seals, and the fallbacks, which only open.

    A value's associated data is ``associated(storage_key) + name`` encoded:
    callers that seal or open many values of one session make the first
    part once.

    :param current: the key of ``SERVERSESSION_ENCRYPTION_KEY`` (32 bytes).
    :param fallbacks: the keys of ``SERVERSESSION_ENCRYPTION_KEY_FALLBACKS``.
    """

    def __init__(self, current: bytes, fallbacks: t.Sequence[bytes] = ()) -> None:
        from cryptography.exceptions import InvalidTag

        keys = [_Key(current), *(_Key(k) for k in fallbacks)]
        self._current = keys[0]
        #: The keys by id; a fallback equal to the key adds nothing.
        self._by_id: dict[str, _Key] = {}
        for key in keys:
            self._by_id.setdefault(key.id, key)
        #: The prefix of every text sealed with the current key.
        self.current_prefix = PREFIX + self._current.id
        self._failures = (InvalidTag, binascii.Error, ValueError, TypeError)

    @staticmethod
    def associated(storage_key: str) -> bytes:
        """The start of the associated data of every value of the session ``storage_key``."""
        # A session key holds no NUL (check_key), and a storage key is hex: unambiguous.
        return _AAD_VERSION + storage_key.encode() + b"\x00"

    def seal(self, text: str, session: bytes, name: str) -> str:
        """Return ``text`` sealed with the current key, as ``name`` of the ``session``
        whose :meth:`associated` data is given."""
        nonce = os.urandom(_NONCE)
        sealed = self._current.encrypt(nonce, text.encode(), session + name.encode())
        return self.current_prefix + b2a_base64(nonce + sealed, newline=False).decode()

    def open(self, text: str, session: bytes, name: str) -> str:
        """Return the text :meth:`seal` sealed as ``text`` for this session and name.

        :raises SealError: no key opens it as this session's ``name``.
        """
        key = self._by_id.get(text[1:_BODY])
        if key is None:
            raise SealError(f"the value of {name!r} was sealed with a key that is not configured")
        try:
            raw = a2b_base64(text[_BODY:])
            plain: bytes = key.decrypt(raw[:_NONCE], raw[_NONCE:], session + name.encode())
            return plain.decode()
        except self._failures as e:
            raise SealError(
                f"the value of {name!r} does not open: it was changed, or belongs to another"
                " session or key"
            ) from e

    def digest(self, user: str) -> str:
        """The user index entry of ``user`` as written now: a keyed digest, not the id."""
        return _digest(self._current.index, user)

    def digests(self, user: str) -> list[str]:
        """The index entries ``user`` may have: under the current key, then each fallback."""
        return [_digest(key.index, user) for key in self._by_id.values()]


def _digest(key: bytes, user: str) -> str:
    return hmac.new(key, user.encode(), hashlib.sha256).hexdigest()
