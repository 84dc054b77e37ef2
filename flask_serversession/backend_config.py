from __future__ import annotations

import os
import re
import typing as t

from .backends.base import Backend
from .config import BACKEND_NAMES
from .config import bad_value
from .config import boolean
from .config import integer
from .config import string
from .errors import ConfigError
from .extras import require

if t.TYPE_CHECKING:
    from flask import Flask


def build_backend(app: Flask) -> Backend:
    """Return the backend named by ``SERVERSESSION_BACKEND``, built from config."""
    value = app.config["SERVERSESSION_BACKEND"]
    if isinstance(value, Backend):
        return value
    builder = _BUILDERS.get(value) if isinstance(value, str) else None
    if builder is None:
        names = ", ".join(map(repr, BACKEND_NAMES))
        raise bad_value("SERVERSESSION_BACKEND", value, f"one of {names}, or a Backend instance")
    return builder(app)


def _memory(app: Flask) -> Backend:
    from .backends.memory import MemoryBackend

    max_entries = integer(app.config, "SERVERSESSION_MEMORY_MAX_ENTRIES", minimum=1)
    return MemoryBackend(max_entries=max_entries)


def _sqlalchemy(app: Flask) -> Backend:
    import sqlalchemy as sa

    from .backends.sql import SQLAlchemyBackend

    config = app.config
    columns = config["SERVERSESSION_SQLALCHEMY_EXTRA_COLUMNS"]
    if not isinstance(columns, (list, tuple)) or not all(isinstance(c, sa.Column) for c in columns):
        raise bad_value(
            "SERVERSESSION_SQLALCHEMY_EXTRA_COLUMNS", columns, "a list of sqlalchemy.Column"
        )
    extras = config["SERVERSESSION_SQLALCHEMY_EXTRAS"]
    if extras is not None and not callable(extras):
        raise bad_value(
            "SERVERSESSION_SQLALCHEMY_EXTRAS",
            extras,
            "None or a function taking the session dict and returning values by column name",
        )
    synchronous_commit = config["SERVERSESSION_SQLALCHEMY_SYNCHRONOUS_COMMIT"]
    if synchronous_commit is not None and not isinstance(synchronous_commit, bool):
        raise bad_value(
            "SERVERSESSION_SQLALCHEMY_SYNCHRONOUS_COMMIT",
            synchronous_commit,
            "None (the server's setting), True or False",
        )
    options: dict[str, t.Any] = {
        "synchronous_commit": synchronous_commit,
        "table_name": string(config, "SERVERSESSION_SQLALCHEMY_TABLE"),
        "extra_columns": columns,
        "extras": extras,
        "user_index": config["SERVERSESSION_USER_KEY"] is not None,
    }
    bind_key = config["SERVERSESSION_SQLALCHEMY_BIND_KEY"]
    db = config["SERVERSESSION_SQLALCHEMY"]
    if db is not None:
        accepted = "a flask_sqlalchemy.SQLAlchemy (the app's db) or None"
        flask_sqlalchemy = require("flask_sqlalchemy", key="SERVERSESSION_SQLALCHEMY", value=db)
        if not isinstance(db, flask_sqlalchemy.SQLAlchemy):
            raise bad_value("SERVERSESSION_SQLALCHEMY", db, accepted)
        if bind_key is not None and not isinstance(bind_key, str):
            raise bad_value("SERVERSESSION_SQLALCHEMY_BIND_KEY", bind_key, "None or a bind name")
        try:
            return SQLAlchemyBackend.from_flask_sqlalchemy(
                db, bind_key=bind_key, app=app, **options
            )
        except ConfigError as e:
            raise ConfigError(f"SERVERSESSION_SQLALCHEMY: {e}") from e
    if bind_key is not None:
        raise bad_value(
            "SERVERSESSION_SQLALCHEMY_BIND_KEY",
            bind_key,
            "None when SERVERSESSION_SQLALCHEMY is None",
        )

    key = "SERVERSESSION_SQLALCHEMY_URI"
    uri = config[key]
    if uri is None:
        uri = "sqlite:///" + os.path.join(app.instance_path, "serversession.sqlite")
    accepted = (
        "a database URL such as 'sqlite:////path/sessions.sqlite'"
        " or 'postgresql+psycopg://user@host/db'"
    )
    try:
        url = sa.make_url(uri)
    except (TypeError, ValueError, sa.exc.ArgumentError) as e:
        shown = re.sub(r"//[^/@]*@", "//***@", uri) if isinstance(uri, str) else uri
        raise ConfigError(f"{key} = {shown!r} is not valid: expected {accepted}.") from e
    shown = url.render_as_string(hide_password=True)
    if synchronous_commit is not None and url.get_backend_name() != "postgresql":
        raise bad_value(
            "SERVERSESSION_SQLALCHEMY_SYNCHRONOUS_COMMIT",
            synchronous_commit,
            f"None: it is a PostgreSQL setting and {key} is {url.get_backend_name()}",
        )
    if url.get_backend_name() == "postgresql" and url.get_driver_name() == "psycopg":
        require("psycopg", key=key, value=shown)
    try:
        return SQLAlchemyBackend.from_url(url, **options)
    except (ImportError, sa.exc.ArgumentError) as e:
        raise ConfigError(
            f"{key} = {shown!r} cannot be used: {e}. Install its driver or fix the URL."
        ) from e
    except OSError as e:
        raise ConfigError(f"{key} = {shown!r} cannot be used: {e}.") from e


def _filesystem(app: Flask) -> Backend:
    from .backends.filesystem import FileSystemBackend

    directory = app.config["SERVERSESSION_FILE_DIR"]
    if directory is None:
        directory = os.path.join(app.instance_path, "serversession")
    elif not isinstance(directory, (str, os.PathLike)):
        raise bad_value("SERVERSESSION_FILE_DIR", directory, "a directory path")
    fsync = boolean(app.config, "SERVERSESSION_FILE_FSYNC")
    try:
        return FileSystemBackend(directory, fsync=fsync)
    except OSError as e:
        raise ConfigError(_directory_problem(os.fspath(directory), e)) from e


def _directory_problem(directory: str, e: OSError) -> str:
    """Why the session directory cannot be used: about the directory, never a file in it."""
    reason = (e.strerror or str(e)).rstrip(".")
    if isinstance(e.filename, str) and os.path.isabs(e.filename) and e.filename != directory:
        reason += f" ({e.filename!r})"  # a parent the app could not create
    elif e.filename is not None and e.filename != directory:
        reason += " when creating a file in it"
    fix = "" if "Fix it" in reason else " Point it at a directory the app can create and write."
    return f"SERVERSESSION_FILE_DIR = {directory!r} cannot be used: {reason}.{fix}"


def _redis(app: Flask) -> Backend:
    from .backends.redis.clients import library_name_for_url

    client = app.config["SERVERSESSION_REDIS"]
    url = app.config["SERVERSESSION_REDIS_URL"]
    if client is None and isinstance(url, str) and library_name_for_url(url) == "valkey":
        require("valkey", key="SERVERSESSION_REDIS_URL", value=re.sub("//[^/@]*@", "//***@", url))
    elif client is None:
        require("redis", key="SERVERSESSION_BACKEND", value="redis")
    from .backends.redis import RedisBackend

    prefix = string(app.config, "SERVERSESSION_KEY_PREFIX")
    if client is not None:
        try:
            return RedisBackend(client, key_prefix=prefix)
        except TypeError as e:
            raise bad_value(
                "SERVERSESSION_REDIS", client, f"a redis-py or valkey-py client ({e})"
            ) from e
    try:
        return RedisBackend.from_url(
            string(app.config, "SERVERSESSION_REDIS_URL"), key_prefix=prefix
        )
    except ValueError as e:
        raise bad_value(
            "SERVERSESSION_REDIS_URL",
            url,
            f"a redis://, rediss://, valkey://, valkeys:// or unix:// URL ({e})",
        ) from e


_BUILDERS: dict[str, t.Callable[[Flask], Backend]] = {
    "memory": _memory,
    "sqlalchemy": _sqlalchemy,
    "filesystem": _filesystem,
    "redis": _redis,
}
