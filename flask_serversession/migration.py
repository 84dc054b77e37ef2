from __future__ import annotations

import difflib
import os
import typing as t
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from .backends.base import Backend
from .backends.moving import MovingBackend
from .config import build_backend
from .config import DEFAULTS
from .errors import ConfigError
from .serialization import SessionSerializer
from .users import user_value

if t.TYPE_CHECKING:
    from flask import Flask

KEY = "SERVERSESSION_MIGRATE_FROM"
#: The settings that describe a store, which the old store's mapping may hold.
STORE_KEYS = frozenset(
    key
    for key in DEFAULTS
    if key == "SERVERSESSION_BACKEND"
    or key.startswith(("SERVERSESSION_SQLALCHEMY", "SERVERSESSION_FILE_", "SERVERSESSION_REDIS"))
    or key in ("SERVERSESSION_KEY_PREFIX", "SERVERSESSION_MEMORY_MAX_ENTRIES")
)
_ACCEPTED = (
    "a Backend instance, or a dict of the SERVERSESSION_* settings of the store the sessions"
    " live in today, e.g. {'SERVERSESSION_BACKEND': 'sqlalchemy',"
    " 'SERVERSESSION_SQLALCHEMY_URI': 'sqlite:////path/serversession.sqlite'}"
)


class _OldStoreApp:
    """The app as the backend builders see it, with the old store's settings as its config."""

    def __init__(self, app: Flask, config: dict[str, t.Any]) -> None:
        self.config = config
        self._app = app

    def __getattr__(self, name: str) -> t.Any:
        return getattr(self._app, name)


def _store_settings(value: Mapping[t.Any, t.Any]) -> dict[str, t.Any]:
    for name in value:
        if name not in STORE_KEYS:
            close = difflib.get_close_matches(str(name), sorted(STORE_KEYS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{KEY} holds {name!r}, which is not a setting of a store: give the"
                f" backend and its own keys only ({', '.join(sorted(STORE_KEYS))}).{hint}"
            )
    if value.get("SERVERSESSION_BACKEND", DEFAULTS["SERVERSESSION_BACKEND"]) == "memory":
        raise ConfigError(
            f"{KEY} names a new memory store, which holds no sessions: the memory store of"
            " the running process is the only one that does. Pass that MemoryBackend instance."
        )
    return {key: value.get(key, DEFAULTS[key]) for key in STORE_KEYS}


def _resolved(app: Flask, settings: dict[str, t.Any]) -> dict[str, t.Any]:
    """``settings`` with the default SQLite file and session directory spelled out."""
    default_file = "sqlite:///" + os.path.join(app.instance_path, "serversession.sqlite")
    default_dir = os.path.join(app.instance_path, "serversession")
    return {
        **settings,
        "SERVERSESSION_SQLALCHEMY_URI": settings["SERVERSESSION_SQLALCHEMY_URI"] or default_file,
        "SERVERSESSION_FILE_DIR": os.fspath(settings["SERVERSESSION_FILE_DIR"] or default_dir),
    }


def build_old_backend(app: Flask) -> Backend:
    """Return the old store that ``SERVERSESSION_MIGRATE_FROM`` names.

    :raises ConfigError: the value is neither a Backend nor a mapping of store
        settings, or it names the current store.
    """
    value = app.config[KEY]
    if isinstance(value, Backend):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{KEY} = {value!r} is not valid: expected {_ACCEPTED}.")
    settings = _store_settings(value)
    current = {key: app.config.get(key, DEFAULTS[key]) for key in STORE_KEYS}
    if _resolved(app, settings) == _resolved(app, current):
        raise ConfigError(
            f"{KEY} names the store the app uses now, so there is nothing to move: set it"
            " to the settings of the old store, or remove it once the move is done."
        )
    try:
        # The old store is read without a user index: it may have been kept without one.
        config = {**DEFAULTS, **settings}
        return build_backend(t.cast("Flask", _OldStoreApp(app, config)))
    except ConfigError as e:
        raise ConfigError(f"{KEY}: {e}") from e


def with_old_store(app: Flask, backend: Backend, user_key: str | None) -> MovingBackend:
    """Return ``backend`` with the sessions of the old store moved into it on first use."""
    old = build_old_backend(app)
    if old is backend:
        raise ConfigError(
            f"{KEY} is the backend the app uses now (SERVERSESSION_BACKEND), so there is"
            " nothing to move: give the old store, or remove the key once the move is done."
        )
    user_of = None if user_key is None else _user_reader(user_key)
    return MovingBackend(backend, old, user_of=user_of)


def _user_reader(user_key: str) -> t.Callable[[t.Mapping[str, str]], str | None]:
    serializer = SessionSerializer()

    def user_of(data: t.Mapping[str, str]) -> str | None:
        if user_key not in data:
            return None
        try:
            return user_value(serializer.loads(data[user_key]))
        except Exception:
            # Damaged data names no one; it is reported where it is decoded.
            return None

    return user_of


@dataclass
class Moved:
    """What ``flask serversession migrate`` did (or would do, with ``--dry-run``)."""

    moved: int = 0
    #: Gone when their turn came: moved by a request meanwhile, expired or ended.
    skipped: int = 0


def move_all(
    backend: MovingBackend,
    keys: t.Sequence[str],
    now: t.Callable[[], datetime],
    *,
    batch_size: int,
    dry_run: bool = False,
    progress: t.Callable[[int], None] = lambda n: None,
) -> Moved:
    """Move the sessions under ``keys`` from the old store to the current one, in batches.

    Safe while the app serves: each session is moved as a request moves it
    (:meth:`MovingBackend.move`), added to the current store only where no
    live session is, so one that a request moved first is skipped, never
    copied twice. Running it again moves what is left.

    :param keys: the keys to move, as :meth:`MovingBackend.old_keys` lists them.
    :param now: returns the current time.
    :param batch_size: how many keys a batch handles.
    :param dry_run: count what would be moved; change nothing.
    :param progress: called after each batch with the number of keys it handled.
    """
    result = Moved()
    for start in range(0, len(keys), batch_size):
        batch = keys[start : start + batch_size]
        if dry_run:
            result.moved += len(batch)
        else:
            moment = now()
            for key in batch:
                if backend.move(key, moment):
                    result.moved += 1
                else:
                    result.skipped += 1
        progress(len(batch))
    return result
