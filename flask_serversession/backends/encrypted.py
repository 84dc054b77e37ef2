"""A backend wrapper that seals every stored value (``SERVERSESSION_ENCRYPTION_KEY``).

It sits between the store, which serializes values to tagged JSON text, and
the real backend, which stores whatever text it gets: values are sealed on
the way in and opened on the way out, each with its session's storage key
and its own name. The user index holds a keyed digest of the user, never
the id. The backend it wraps is unchanged and knows of no key.
"""

from __future__ import annotations

import typing as t
from dataclasses import replace
from datetime import datetime
from datetime import timedelta

from ..ciphers import Keyring
from ..ciphers import PREFIX
from ..ciphers import SealError
from ..log import logger
from .base import Backend
from .base import check_size
from .base import CorruptRecordError
from .base import data_size
from .base import Delta
from .base import Record


class EncryptedBackend(Backend):
    """Seal the values of ``inner``'s records with ``keyring``.

    Stored plaintext values (written before encryption was turned on) open
    as they are and are sealed when next written.

    :param inner: the backend that stores the sealed records.
    :param keyring: the current key and the fallbacks.
    :param max_size: ``SERVERSESSION_MAX_SIZE``, held against the sealed size
        of a new record (a delta carries its own).

    .. versionadded:: 0.3
    """

    def __init__(self, inner: Backend, keyring: Keyring, max_size: int | None = None) -> None:
        self.inner = inner
        self.keyring = keyring
        self.max_size = max_size

    @property
    def wrapped(self) -> Backend:
        """The backend it seals for (see :func:`~.base.innermost`)."""
        return self.inner

    def __getattr__(self, name: str) -> t.Any:
        # What apps and tools read of the real backend (table, engine, client, directory).
        return getattr(self.inner, name)

    def seal_data(self, key: str, data: t.Mapping[str, str]) -> dict[str, str]:
        """Return ``data`` with every value sealed for the session ``key``."""
        seal, session = self.keyring.seal, self.keyring.associated(key)
        return {name: seal(text, session, name) for name, text in data.items()}

    def open_data(self, key: str, data: t.Mapping[str, str]) -> dict[str, str]:
        """Return ``data`` with every sealed value opened; plaintext values as they are.

        :raises CorruptRecordError: a value does not open with any key.
        """
        opened, session = self.keyring.open, self.keyring.associated(key)
        try:
            return {
                name: opened(text, session, name) if text[:1] == PREFIX else text
                for name, text in data.items()
            }
        except SealError as e:
            raise CorruptRecordError(str(e)) from e

    def _open(self, key: str, record: Record, user: str | None = None) -> Record:
        # The stored user is a digest: callers that need the user read it from the data.
        data = self.open_data(key, record.data)
        return Record(data, record.created_at, record.expires_at, None, user)

    def _user(self, user: str | None) -> str | None:
        return None if user is None else self.keyring.digest(user)

    def load(self, key: str) -> Record | None:
        record = self.inner.load(key)
        return None if record is None else self._open(key, record)

    def create(self, key: str, record: Record) -> None:
        data = self.seal_data(key, record.data)
        # What is stored counts, as the backend counts it on a delta.
        check_size(0, data_size(data), self.max_size)
        self.inner.create(key, replace(record, data=data, user=self._user(record.user)))

    def update(self, key: str, delta: Delta, now: datetime) -> bool:
        if delta.expect is not None:
            sealed = self._sealed_expect(key, delta.expect)
            if sealed is False:
                return False
            delta = replace(delta, expect=sealed)
        if delta.set or delta.user is not None:
            delta = replace(delta, set=self.seal_data(key, delta.set), user=self._user(delta.user))
        return self.inner.update(key, delta, now)

    def _sealed_expect(
        self, key: str, expect: tuple[str, str | None]
    ) -> tuple[str, str | None] | t.Literal[False]:
        """Turn a compare-and-set on a value into one on its stored, sealed text.

        The caller names the value it read; the store holds it sealed, and a
        sealed text is never written twice (each seal has a fresh nonce), so
        the stored text that opens to that value stands for it. False when
        the stored value is something else already.
        """
        name, wanted = expect
        record = self.inner.load(key)
        if record is None:
            return False
        stored = record.data.get(name)
        try:
            opened = None if stored is None else self.open_data(key, {name: stored})[name]
        except CorruptRecordError:
            return False
        return (name, stored) if opened == wanted else False

    def touch(self, key: str, expires_at: datetime, now: datetime) -> bool:
        return self.inner.touch(key, expires_at, now)

    def take(self, key: str, now: datetime) -> Record | None:
        record = self.inner.take(key, now)
        if record is None:
            return None
        try:
            return self._open(key, record)
        except CorruptRecordError as e:
            logger.error("Session %s does not decrypt, removed: %s", key, e)
            return None

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def purge_expired(self, now: datetime, *, longest_lifetime: timedelta | None = None) -> int:
        return self.inner.purge_expired(now, longest_lifetime=longest_lifetime)

    def count(self, now: datetime) -> int:
        return self.inner.count(now)

    def items(self, now: datetime) -> t.Iterator[tuple[str, Record]]:
        for key, record in self.inner.items(now):
            try:
                yield key, self._open(key, record)
            except CorruptRecordError as e:
                logger.error("Session %s does not decrypt, skipped: %s", key, e)

    def clear(self) -> int:
        return self.inner.clear()

    def close(self) -> None:
        self.inner.close()

    def user_records(self, user: str, now: datetime) -> list[tuple[str, Record]]:
        """The records indexed under ``user``'s digest by the current key or any fallback."""
        found: dict[str, Record] = {}
        for digest in self.keyring.digests(user):
            for key, record in self.inner.user_records(digest, now):
                if key in found:
                    continue
                try:
                    found[key] = self._open(key, record, user)
                except CorruptRecordError as e:
                    logger.error("Session %s does not decrypt, not listed: %s", key, e)
        return list(found.items())

    def reseal(
        self, key: str, record: Record, user_of: UserOf, now: datetime, *, attempts: int = 5
    ) -> Resealed:
        """Seal with the current key every value of the stored ``record`` that is not yet,
        and index its user under the current key's digest.

        Written with the backend's :meth:`~Backend.rewrite`: a save that lands
        between the read and the write makes it read the session again, so
        no write is lost. ``record`` is as stored (from ``inner.items``).

        :param user_of: the user that a session's opened data names, or None.
        """
        for _ in range(attempts):
            stale = {n: v for n, v in record.data.items() if not v.startswith(self._prefix)}
            try:
                user = user_of(self.open_data(key, record.data))
            except CorruptRecordError as e:
                logger.error("Session %s does not decrypt, not re-encrypted: %s", key, e)
                return "damaged"
            digest = self._user(user)
            moved = record.user is not None and record.user != digest
            if not stale and not moved:
                return "current"
            fresh = self.seal_data(key, self.open_data(key, stale))
            delta = Delta(record.expires_at, fresh, user=digest, user_changed=moved)
            if self.inner.rewrite(key, record, delta, now):
                return "rewritten"
            # Saved, renewed or ended meanwhile: read it again.
            again = self.inner.load(key)
            if again is None or again.expires_at <= now:
                return "gone"
            record = again
        return "busy"

    @property
    def _prefix(self) -> str:
        return self.keyring.current_prefix


#: The user a session's opened data names (``Users.user_of``).
UserOf = t.Callable[[t.Mapping[str, str]], "str | None"]
#: What :meth:`EncryptedBackend.reseal` did with one session.
Resealed = t.Literal["current", "rewritten", "gone", "damaged", "busy"]
