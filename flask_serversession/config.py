from __future__ import annotations

import os
import re
import typing as t
import warnings
from dataclasses import dataclass
from datetime import timedelta

from .backends.base import Backend
from .errors import ConfigError
from .extras import require
from .leftover_keys import warn_flask_session_keys

if t.TYPE_CHECKING:
    from flask import Flask

RENEW_ON_CHOICES = ("modify", "access", "never")
BACKEND_NAMES = ("sqlalchemy", "filesystem", "redis", "memory")

DEFAULTS: dict[str, t.Any] = {
    "SERVERSESSION_BACKEND": "sqlalchemy",
    "SERVERSESSION_EXPIRE_TIME": timedelta(hours=24),
    "SERVERSESSION_RENEW_TIME": timedelta(hours=1),
    "SERVERSESSION_RENEW_ON": "modify",
    "SERVERSESSION_ABSOLUTE_LIFETIME": None,
    "SERVERSESSION_PERMANENT": False,
    "SERVERSESSION_SIGN_ID": True,
    "SERVERSESSION_HEADER_NAME": None,
    "SERVERSESSION_MAX_SIZE": 1024 * 1024,
    "SERVERSESSION_PURGE_EVERY": 0,
    "SERVERSESSION_PURGE_INTERVAL": 0,
    "SERVERSESSION_KEY_PREFIX": "serversession:",
    "SERVERSESSION_SQLALCHEMY": None,
    "SERVERSESSION_SQLALCHEMY_BIND_KEY": None,
    "SERVERSESSION_SQLALCHEMY_URI": None,
    "SERVERSESSION_SQLALCHEMY_TABLE": "serversession",
    "SERVERSESSION_SQLALCHEMY_SYNCHRONOUS_COMMIT": None,
    "SERVERSESSION_SQLALCHEMY_EXTRA_COLUMNS": (),
    "SERVERSESSION_SQLALCHEMY_EXTRAS": None,
    "SERVERSESSION_FILE_DIR": None,
    "SERVERSESSION_FILE_FSYNC": False,
    "SERVERSESSION_REDIS": None,
    "SERVERSESSION_REDIS_URL": "redis://localhost:6379/0",
    "SERVERSESSION_MEMORY_MAX_ENTRIES": 100_000,
    "SERVERSESSION_ADOPT_COOKIE_SESSIONS": False,
    "SERVERSESSION_ADOPT_FLASK_SESSION": False,
    "SERVERSESSION_USER_KEY": None,
    "SERVERSESSION_MAX_SESSIONS_PER_USER": None,
    "SERVERSESSION_TRACK_CLIENT": False,
    "SERVERSESSION_LAST_SEEN_EVERY": timedelta(minutes=5),
    "SERVERSESSION_ROTATE_EVERY": None,
    "SERVERSESSION_ROTATE_GRACE": timedelta(seconds=60),
    "SERVERSESSION_REVOKE_ON_REUSE": True,
    # Metrics (0.3)
    "SERVERSESSION_METRICS": None,
    "SERVERSESSION_METRICS_REGISTRY": None,
}


@dataclass(frozen=True)
class Settings:
    """The validated ``SERVERSESSION_*`` values the session layer uses."""

    expire_time: timedelta
    renew_time: timedelta
    renew_on: str
    absolute_lifetime: timedelta | None
    permanent: bool
    sign_id: bool
    header_name: str | None
    max_size: int
    purge_every: int
    purge_interval: timedelta
    #: Take over Flask's own cookie sessions (``SERVERSESSION_ADOPT_COOKIE_SESSIONS``).
    adopt_cookie_sessions: bool = False
    #: Take over Flask-Session's sessions (``SERVERSESSION_ADOPT_FLASK_SESSION``).
    adopt_flask_session: bool = False
    #: The session key naming the signed-in user (None: no user index).
    user_key: str | None = None
    max_sessions_per_user: int | None = None
    track_client: bool = False
    last_seen_every: timedelta = timedelta(minutes=5)
    #: Give a session a new id when its id is older than this (None: never).
    rotate_every: timedelta | None = None
    #: How long a rotated-out token keeps opening the session once the new one was used.
    rotate_grace: timedelta = timedelta(seconds=60)
    #: End the session when a rotated-out token comes back after its grace.
    revoke_on_reuse: bool = True


def _bad(key: str, value: t.Any, accepted: str) -> ConfigError:
    return ConfigError(f"{key} = {value!r} is not valid: expected {accepted}.")


def duration(
    config: t.Mapping[str, t.Any], key: str, *, optional: bool = False, zero: bool = False
) -> timedelta | None:
    """Read a duration given as a ``timedelta`` or a number of seconds."""
    value = config[key]
    if value is None and optional:
        return None
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        result = timedelta(seconds=value)
    else:
        result = None
    if result is None or result < timedelta(0) or (not zero and not result):
        what = "a non-negative" if zero else "a positive"
        none = " or None" if optional else ""
        raise _bad(key, value, f"{what} timedelta or number of seconds{none}")
    return result


def integer(config: t.Mapping[str, t.Any], key: str, *, minimum: int) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(key, value, f"an integer of at least {minimum}")
    return value


def boolean(config: t.Mapping[str, t.Any], key: str) -> bool:
    value = config[key]
    if not isinstance(value, bool):
        raise _bad(key, value, "True or False")
    return value


def optional_string(config: t.Mapping[str, t.Any], key: str) -> str | None:
    value: str | None = config[key]
    if value is not None and (not isinstance(value, str) or not value):
        raise _bad(key, value, "a non-empty string or None")
    return value


def string(config: t.Mapping[str, t.Any], key: str) -> str:
    value = optional_string(config, key)
    if value is None:
        raise _bad(key, value, "a non-empty string")
    return value


def _follow_flask_lifetime(app: Flask) -> None:
    """Give ``PERMANENT_SESSION_LIFETIME`` its meaning when the app changed it.

    It becomes the session lifetime unless ``SERVERSESSION_EXPIRE_TIME`` is
    set too; then that one wins, and a differing Flask value is not dropped
    without a word.
    """
    config = app.config
    flask_lifetime = app.permanent_session_lifetime
    if flask_lifetime == app.default_config["PERMANENT_SESSION_LIFETIME"]:
        return
    if "SERVERSESSION_EXPIRE_TIME" not in config:
        config["SERVERSESSION_EXPIRE_TIME"] = flask_lifetime
        return
    ours = duration(config, "SERVERSESSION_EXPIRE_TIME")
    if ours != flask_lifetime:
        warnings.warn(
            f"PERMANENT_SESSION_LIFETIME ({flask_lifetime}) is not used: sessions live for"
            f" SERVERSESSION_EXPIRE_TIME ({ours}). Set only one of them.",
            UserWarning,
            stacklevel=4,
        )


def read_settings(app: Flask) -> Settings:
    """Fill in defaults and validate the session settings of ``app``."""
    config = app.config
    _follow_flask_lifetime(app)
    for key, default in DEFAULTS.items():
        config.setdefault(key, default)

    renew_on = config["SERVERSESSION_RENEW_ON"]
    if renew_on not in RENEW_ON_CHOICES:
        raise _bad("SERVERSESSION_RENEW_ON", renew_on, " or ".join(map(repr, RENEW_ON_CHOICES)))

    sign_id = boolean(config, "SERVERSESSION_SIGN_ID")

    settings = Settings(
        expire_time=duration(config, "SERVERSESSION_EXPIRE_TIME"),  # type: ignore[arg-type]
        renew_time=duration(config, "SERVERSESSION_RENEW_TIME", zero=True),  # type: ignore[arg-type]
        renew_on=renew_on,
        absolute_lifetime=duration(config, "SERVERSESSION_ABSOLUTE_LIFETIME", optional=True),
        permanent=boolean(config, "SERVERSESSION_PERMANENT"),
        sign_id=sign_id,
        header_name=optional_string(config, "SERVERSESSION_HEADER_NAME"),
        max_size=integer(config, "SERVERSESSION_MAX_SIZE", minimum=1),
        purge_every=integer(config, "SERVERSESSION_PURGE_EVERY", minimum=0),
        purge_interval=duration(config, "SERVERSESSION_PURGE_INTERVAL", zero=True),  # type: ignore[arg-type]
        adopt_cookie_sessions=boolean(config, "SERVERSESSION_ADOPT_COOKIE_SESSIONS"),
        adopt_flask_session=boolean(config, "SERVERSESSION_ADOPT_FLASK_SESSION"),
        rotate_every=duration(config, "SERVERSESSION_ROTATE_EVERY", optional=True),
        rotate_grace=duration(config, "SERVERSESSION_ROTATE_GRACE", zero=True),  # type: ignore[arg-type]
        revoke_on_reuse=boolean(config, "SERVERSESSION_REVOKE_ON_REUSE"),
        **_user_settings(config),
    )
    if not config["SERVERSESSION_ADOPT_FLASK_SESSION"]:
        warn_flask_session_keys(config)
    return settings


def _user_settings(config: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    user_key = optional_string(config, "SERVERSESSION_USER_KEY")
    if user_key is not None and user_key.startswith("_serversession_"):
        raise _bad("SERVERSESSION_USER_KEY", user_key, "a key not starting with '_serversession_'")
    limit = config["SERVERSESSION_MAX_SESSIONS_PER_USER"]
    if limit is not None:
        limit = integer(config, "SERVERSESSION_MAX_SESSIONS_PER_USER", minimum=1)
    track_client = boolean(config, "SERVERSESSION_TRACK_CLIENT")
    for key, value in (("MAX_SESSIONS_PER_USER", limit), ("TRACK_CLIENT", track_client)):
        if user_key is None and value not in (None, False):
            raise ConfigError(
                f"SERVERSESSION_{key} = {value!r} needs SERVERSESSION_USER_KEY: set it to the"
                " session key that names the signed-in user (Flask-Login's is '_user_id')."
            )
    return {
        "user_key": user_key,
        "max_sessions_per_user": limit,
        "track_client": track_client,
        "last_seen_every": duration(config, "SERVERSESSION_LAST_SEEN_EVERY", zero=True),
    }


def build_backend(app: Flask) -> Backend:
    """Return the backend named by ``SERVERSESSION_BACKEND``, built from config."""
    value = app.config["SERVERSESSION_BACKEND"]
    if isinstance(value, Backend):
        return value
    builder = _BUILDERS.get(value) if isinstance(value, str) else None
    if builder is None:
        names = ", ".join(map(repr, BACKEND_NAMES))
        raise _bad("SERVERSESSION_BACKEND", value, f"one of {names}, or a Backend instance")
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
        raise _bad("SERVERSESSION_SQLALCHEMY_EXTRA_COLUMNS", columns, "a list of sqlalchemy.Column")
    extras = config["SERVERSESSION_SQLALCHEMY_EXTRAS"]
    if extras is not None and not callable(extras):
        raise _bad(
            "SERVERSESSION_SQLALCHEMY_EXTRAS",
            extras,
            "None or a function taking the session dict and returning values by column name",
        )
    synchronous_commit = config["SERVERSESSION_SQLALCHEMY_SYNCHRONOUS_COMMIT"]
    if synchronous_commit is not None and not isinstance(synchronous_commit, bool):
        raise _bad(
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
            raise _bad("SERVERSESSION_SQLALCHEMY", db, accepted)
        if bind_key is not None and not isinstance(bind_key, str):
            raise _bad("SERVERSESSION_SQLALCHEMY_BIND_KEY", bind_key, "None or a bind name")
        try:
            return SQLAlchemyBackend.from_flask_sqlalchemy(
                db, bind_key=bind_key, app=app, **options
            )
        except ConfigError as e:
            raise ConfigError(f"SERVERSESSION_SQLALCHEMY: {e}") from e
    if bind_key is not None:
        raise _bad(
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
        raise _bad(
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
        raise _bad("SERVERSESSION_FILE_DIR", directory, "a directory path")
    fsync = boolean(app.config, "SERVERSESSION_FILE_FSYNC")
    try:
        return FileSystemBackend(directory, fsync=fsync)
    except OSError as e:
        raise ConfigError(
            f"SERVERSESSION_FILE_DIR = {os.fspath(directory)!r} cannot be used: {e}."
            " Point it at a directory the app can create and write."
        ) from e


def _redis(app: Flask) -> Backend:
    require("redis", key="SERVERSESSION_BACKEND", value="redis")
    from .backends.redis import RedisBackend

    prefix = string(app.config, "SERVERSESSION_KEY_PREFIX")
    client = app.config["SERVERSESSION_REDIS"]
    if client is not None:
        try:
            return RedisBackend(client, key_prefix=prefix)
        except TypeError as e:
            raise _bad("SERVERSESSION_REDIS", client, f"a redis client ({e})") from e
    url = app.config["SERVERSESSION_REDIS_URL"]
    try:
        return RedisBackend.from_url(
            string(app.config, "SERVERSESSION_REDIS_URL"), key_prefix=prefix
        )
    except ValueError as e:
        raise _bad("SERVERSESSION_REDIS_URL", url, f"a redis:// or rediss:// URL ({e})") from e


_BUILDERS: dict[str, t.Callable[[Flask], Backend]] = {
    "memory": _memory,
    "sqlalchemy": _sqlalchemy,
    "filesystem": _filesystem,
    "redis": _redis,
}


def read_metrics(config: t.Mapping[str, t.Any]) -> tuple[str, t.Any] | None:
    """Return ``(kind, registry)`` when ``SERVERSESSION_METRICS`` turns metrics on (0.3)."""
    kind, registry = config["SERVERSESSION_METRICS"], config["SERVERSESSION_METRICS_REGISTRY"]
    if kind is None:
        if registry is not None:
            raise _bad("SERVERSESSION_METRICS", kind, "'prometheus' or 'opentelemetry' (a"
                       " SERVERSESSION_METRICS_REGISTRY is set)")  # fmt: skip
        return None
    if kind not in ("prometheus", "opentelemetry"):
        raise _bad("SERVERSESSION_METRICS", kind, "None, 'prometheus' or 'opentelemetry'")
    module, cls, wanted = {
        "prometheus": ("prometheus_client", "CollectorRegistry", "a prometheus_client"),
        "opentelemetry": ("opentelemetry.metrics", "MeterProvider", "an OpenTelemetry"),
    }[kind]
    expected = getattr(require(module, key="SERVERSESSION_METRICS", value=kind), cls)
    if registry is not None and not isinstance(registry, expected):
        what = f"{wanted} {cls}, or None for the global one"
        raise _bad("SERVERSESSION_METRICS_REGISTRY", registry, what)
    return kind, registry
