from __future__ import annotations

import re
import typing as t
import warnings
from dataclasses import dataclass
from datetime import timedelta

from .ciphers import Keyring
from .ciphers import read_key
from .errors import ConfigError
from .extras import require
from .leftover_keys import warn_flask_session_keys
from .unknown_keys import warn_unknown_keys

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
    # Device-bound sessions (DBSC).
    "SERVERSESSION_DEVICE_BOUND": False,
    "SERVERSESSION_DEVICE_BOUND_PATH": "/_serversession/dbsc",
    "SERVERSESSION_DEVICE_BOUND_REFRESH": timedelta(minutes=10),
    # Moving between stores (flask_serversession.migration).
    "SERVERSESSION_MIGRATE_FROM": None,
    # Encryption at rest (encryption.rst).
    "SERVERSESSION_ENCRYPTION_KEY": None,
    "SERVERSESSION_ENCRYPTION_KEY_FALLBACKS": (),
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
    #: Offer Device Bound Session Credentials (``SERVERSESSION_DEVICE_BOUND``).
    device_bound: bool = False
    #: Where the DBSC endpoints are: ``<path>/register`` and ``<path>/refresh``.
    device_bound_path: str = "/_serversession/dbsc"
    #: How long a bound cookie lasts before the browser proves its key again.
    device_bound_refresh: timedelta = timedelta(minutes=10)
    #: The keys that seal stored values (``SERVERSESSION_ENCRYPTION_KEY``); None: plaintext.
    encryption: Keyring | None = None


def bad_value(key: str, value: t.Any, accepted: str) -> ConfigError:
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
        raise bad_value(key, value, f"{what} timedelta or number of seconds{none}")
    return result


def integer(config: t.Mapping[str, t.Any], key: str, *, minimum: int) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise bad_value(key, value, f"an integer of at least {minimum}")
    return value


def boolean(config: t.Mapping[str, t.Any], key: str) -> bool:
    value = config[key]
    if not isinstance(value, bool):
        raise bad_value(key, value, "True or False")
    return value


def optional_string(config: t.Mapping[str, t.Any], key: str) -> str | None:
    value: str | None = config[key]
    if value is not None and (not isinstance(value, str) or not value):
        raise bad_value(key, value, "a non-empty string or None")
    return value


def string(config: t.Mapping[str, t.Any], key: str) -> str:
    value = optional_string(config, key)
    if value is None:
        raise bad_value(key, value, "a non-empty string")
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
        raise bad_value(
            "SERVERSESSION_RENEW_ON", renew_on, " or ".join(map(repr, RENEW_ON_CHOICES))
        )

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
        **_device_bound_settings(config),
        encryption=encryption_keys(config),
    )
    if not config["SERVERSESSION_ADOPT_FLASK_SESSION"]:
        warn_flask_session_keys(config)
    if settings.rotate_every is not None and not settings.rotate_grace:
        # Rotation: a browser's concurrent requests would end the session as a reuse.
        raise bad_value(
            "SERVERSESSION_ROTATE_GRACE",
            config["SERVERSESSION_ROTATE_GRACE"],
            "a positive span while SERVERSESSION_ROTATE_EVERY is set (30 seconds or more:"
            " requests in flight, other tabs and lost responses still bring the old token)",
        )
    # DEFAULTS is read now, so keys that other modules add to it count as known.
    warn_unknown_keys(config, DEFAULTS)
    return settings


def _user_settings(config: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    user_key = optional_string(config, "SERVERSESSION_USER_KEY")
    if user_key is not None and user_key.startswith("_serversession_"):
        raise bad_value(
            "SERVERSESSION_USER_KEY", user_key, "a key not starting with '_serversession_'"
        )
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


def _device_bound_settings(config: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
    """The ``SERVERSESSION_DEVICE_BOUND*`` settings (DBSC)."""
    path = config["SERVERSESSION_DEVICE_BOUND_PATH"]
    if not isinstance(path, str) or not re.fullmatch(r"(/[\w.~-]+)+", path, re.ASCII):
        raise bad_value(
            "SERVERSESSION_DEVICE_BOUND_PATH",
            path,
            "a URL path such as '/_serversession/dbsc': segments of letters, digits"
            " and '._~-', each after a '/', none at the end",
        )
    return {
        "device_bound": boolean(config, "SERVERSESSION_DEVICE_BOUND"),
        "device_bound_path": path,
        "device_bound_refresh": duration(config, "SERVERSESSION_DEVICE_BOUND_REFRESH"),
    }


def encryption_keys(config: t.Mapping[str, t.Any]) -> Keyring | None:
    """The keyring of ``SERVERSESSION_ENCRYPTION_KEY`` and its fallbacks; None when unset."""
    value = config["SERVERSESSION_ENCRYPTION_KEY"]
    fallbacks = config["SERVERSESSION_ENCRYPTION_KEY_FALLBACKS"]
    name = "SERVERSESSION_ENCRYPTION_KEY_FALLBACKS"
    if isinstance(fallbacks, (str, bytes)) or not isinstance(fallbacks, (list, tuple)):
        raise ConfigError(
            f"{name} is not valid: it is a {type(fallbacks).__name__}, and it is a list of"
            " older keys (the newest first), [] when there are none."
        )
    if value is None:
        if fallbacks:
            raise ConfigError(
                f"{name} is set but SERVERSESSION_ENCRYPTION_KEY is not: fallbacks only open"
                " values, and the key seals them. Set the key, or leave both unset."
            )
        return None
    require("cryptography", key="SERVERSESSION_ENCRYPTION_KEY", value="<a key>")
    key = read_key(value, "SERVERSESSION_ENCRYPTION_KEY")
    older = [read_key(v, f"{name}[{i}]") for i, v in enumerate(fallbacks)]
    return Keyring(key, older)


def read_metrics(config: t.Mapping[str, t.Any]) -> tuple[str, t.Any] | None:
    """Return ``(kind, registry)`` when ``SERVERSESSION_METRICS`` turns metrics on (0.3)."""
    kind, registry = config["SERVERSESSION_METRICS"], config["SERVERSESSION_METRICS_REGISTRY"]
    if kind is None:
        if registry is not None:
            raise bad_value("SERVERSESSION_METRICS", kind, "'prometheus' or 'opentelemetry' (a"
                       " SERVERSESSION_METRICS_REGISTRY is set)")  # fmt: skip
        return None
    if kind not in ("prometheus", "opentelemetry"):
        raise bad_value("SERVERSESSION_METRICS", kind, "None, 'prometheus' or 'opentelemetry'")
    module, cls, wanted = {
        "prometheus": ("prometheus_client", "CollectorRegistry", "a prometheus_client"),
        "opentelemetry": ("opentelemetry.metrics", "MeterProvider", "an OpenTelemetry"),
    }[kind]
    expected = getattr(require(module, key="SERVERSESSION_METRICS", value=kind), cls)
    if registry is not None and not isinstance(registry, expected):
        what = f"{wanted} {cls}, or None for the global one"
        raise bad_value("SERVERSESSION_METRICS_REGISTRY", registry, what)
    return kind, registry
