from __future__ import annotations

import os
import sys
import typing as t
import warnings

#: Every key Flask-Session 0.8 reads, and the key that takes its place here.
FLASK_SESSION_KEYS: dict[str, str | None] = {
    "SESSION_TYPE": "SERVERSESSION_BACKEND",
    "SESSION_PERMANENT": "SERVERSESSION_PERMANENT",
    "SESSION_USE_SIGNER": "SERVERSESSION_SIGN_ID",
    "SESSION_KEY_PREFIX": "SERVERSESSION_KEY_PREFIX",
    "SESSION_ID_LENGTH": None,
    "SESSION_SERIALIZATION_FORMAT": None,
    "SESSION_CLEANUP_N_REQUESTS": "SERVERSESSION_PURGE_EVERY",
    "SESSION_REDIS": "SERVERSESSION_REDIS",
    "SESSION_MEMCACHED": None,
    "SESSION_CACHELIB": "SERVERSESSION_FILE_DIR",
    "SESSION_FILE_DIR": "SERVERSESSION_FILE_DIR",
    "SESSION_FILE_THRESHOLD": None,
    "SESSION_FILE_MODE": None,
    "SESSION_MONGODB": None,
    "SESSION_MONGODB_DB": None,
    "SESSION_MONGODB_COLLECT": None,
    "SESSION_SQLALCHEMY": "SERVERSESSION_SQLALCHEMY",
    "SESSION_SQLALCHEMY_TABLE": "SERVERSESSION_SQLALCHEMY_TABLE",
    "SESSION_SQLALCHEMY_SEQUENCE": None,
    "SESSION_SQLALCHEMY_SCHEMA": None,
    "SESSION_SQLALCHEMY_BIND_KEY": "SERVERSESSION_SQLALCHEMY_BIND_KEY",
    "SESSION_DYNAMODB": None,
    "SESSION_DYNAMODB_TABLE": None,
}

#: Why a key with no replacement has none.
_WHY_NONE = {
    "SESSION_ID_LENGTH": "session ids are always 256 bits",
    "SESSION_SERIALIZATION_FORMAT": "sessions are always stored as Flask's tagged JSON",
    "SESSION_MEMCACHED": "there is no Memcached backend",
    "SESSION_FILE_THRESHOLD": "files are removed by purge, not by number",
    "SESSION_FILE_MODE": "session files are always created with mode 0600",
    "SESSION_MONGODB": "there is no MongoDB backend",
    "SESSION_MONGODB_DB": "there is no MongoDB backend",
    "SESSION_MONGODB_COLLECT": "there is no MongoDB backend",
    "SESSION_SQLALCHEMY_SEQUENCE": "the table's primary key is the storage key",
    "SESSION_SQLALCHEMY_SCHEMA": "for a schema, pass a SQLAlchemyBackend whose MetaData names it",
    "SESSION_DYNAMODB": "there is no DynamoDB backend",
    "SESSION_DYNAMODB_TABLE": "there is no DynamoDB backend",
}

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def warn_flask_session_keys(config: t.Mapping[str, t.Any]) -> None:
    """Warn once for each Flask-Session key left in ``config``: none of them is read.

    Keeping ``SESSION_TYPE = "redis"`` after replacing Flask-Session would
    otherwise put every session into the default SQLite file without a word.
    Callers skip this while Flask-Session's keys are read for adoption.
    """
    for key, replacement in FLASK_SESSION_KEYS.items():
        if key not in config:
            continue
        if replacement is None:
            instead = f"no key replaces it ({_WHY_NONE[key]}): remove it"
        else:
            instead = f"set {replacement} instead"
        if key == "SESSION_TYPE":
            backend = config.get("SERVERSESSION_BACKEND")
            instead += f" (sessions now go to SERVERSESSION_BACKEND = {backend!r})"
        warnings.warn(
            f"{key} is a Flask-Session setting, which Flask-ServerSession does not read:"
            f" {instead}. It is read only to adopt Flask-Session's sessions, while"
            " SERVERSESSION_ADOPT_FLASK_SESSION is True.",
            UserWarning,
            stacklevel=callers_level(),
        )


def callers_level() -> int:
    """The ``stacklevel`` of the first frame outside this package, the app's own line."""
    level = 2
    frame = sys._getframe(2)
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(
        _PACKAGE + os.sep
    ):
        frame = frame.f_back
        level += 1
    return level
