"""``flask serversession reencrypt``: seal every live session with the current key now,
so that the keys in ``SERVERSESSION_ENCRYPTION_KEY_FALLBACKS`` can go."""

from __future__ import annotations

import typing as t
from collections import Counter
from datetime import datetime

from .backends.base import Backend
from .backends.encrypted import EncryptedBackend
from .backends.encrypted import Resealed
from .errors import ConfigError

if t.TYPE_CHECKING:
    from .users import Users


class Host(t.Protocol):
    """What a re-encryption uses of the store it serves."""

    backend: Backend
    users: Users
    clock: t.Callable[[], datetime]

    def count(self) -> int: ...


def sealing_backend(store: Host) -> EncryptedBackend:
    """The store's sealing backend; ConfigError when encryption is off."""
    backend = store.backend
    if not isinstance(backend, EncryptedBackend):
        raise ConfigError(
            "SERVERSESSION_ENCRYPTION_KEY is not set, so there is nothing to re-encrypt with:"
            " set it (and list the old key in SERVERSESSION_ENCRYPTION_KEY_FALLBACKS)."
        )
    return backend


def reencrypt(
    store: Host, *, progress: t.Callable[[int], None] = lambda n: None
) -> Counter[Resealed]:
    """Seal every live session's values with the current key; say what each session needed.

    Sessions are read as the backend lists them (in batches, as it reads
    them) and each is rewritten on its own, atomically, while the app
    serves: a save that lands meanwhile is kept. Running it again rewrites
    nothing (every session then counts as ``"current"``).

    :param progress: called with the number of sessions done since the last call.
    """
    backend = sealing_backend(store)
    now = store.clock()
    user_of = store.users.user_of
    done: Counter[Resealed] = Counter()
    for key, record in backend.inner.items(now):
        done[backend.reseal(key, record, user_of, now)] += 1
        progress(1)
    return done
