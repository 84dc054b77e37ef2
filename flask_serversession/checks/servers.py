from __future__ import annotations

import os
import re
import typing as t

from ..backends.base import innermost
from . import Finding
from .reads import bounded
from .reads import directory_chain
from .reads import redis_settings
from .reads import shown_url
from .reads import sql_setting
from .reads import StoreUnreachable
from .reads import UnreadableSetting
from .schema import check_schema

if t.TYPE_CHECKING:
    from flask import Flask

    from ..backends.base import Backend
    from ..backends.filesystem import FileSystemBackend
    from ..backends.redis import RedisBackend
    from ..backends.sql import SQLAlchemyBackend
    from ..store import SessionStore

#: Environment variables that platforms running several copies of an app
#: set, each copy on a disk of its own: (variable, platform).
PLATFORM_VARIABLES = (
    ("KUBERNETES_SERVICE_HOST", "Kubernetes"),
    ("DYNO", "Heroku"),
    ("K_SERVICE", "Cloud Run"),
    ("ECS_CONTAINER_METADATA_URI_V4", "Amazon ECS"),
    ("FLY_ALLOC_ID", "Fly.io"),
)

#: Eviction policies under which Redis deletes session hashes to free memory:
#: every session hash has an expiry, so the volatile-* ones pick them too.
EVICTING_POLICY = re.compile("(allkeys|volatile)-.*")


#: The backend classes the checks know, by name.
KNOWN_BACKENDS = ("MemoryBackend", "SQLAlchemyBackend", "FileSystemBackend", "RedisBackend")


def backend_kind(backend: Backend) -> str | None:
    """The name of the project's backend class that ``backend`` is (or extends).

    Found by the class's ancestry, so no backend module (nor the driver it
    needs) is imported, wherever in the package the class lives.
    """
    for cls in type(backend).__mro__:
        if cls.__module__.startswith("flask_serversession.") and cls.__name__ in KNOWN_BACKENDS:
            return cls.__name__
    return None


def check_store(app: Flask) -> t.Iterator[Finding]:
    """Findings about the app's backend and what its server says."""
    store: SessionStore = app.extensions["serversession"]
    backend = innermost(store.backend)
    kind = backend_kind(backend)
    if kind == "MemoryBackend":
        yield _in_memory("SERVERSESSION_BACKEND", "'memory'")
    elif kind == "SQLAlchemyBackend":
        yield from _sql(app, t.cast("SQLAlchemyBackend", backend))
        yield from check_schema(t.cast("SQLAlchemyBackend", backend))
    elif kind == "FileSystemBackend":
        yield from _directory(t.cast("FileSystemBackend", backend).directory)
        yield from _one_host("SERVERSESSION_FILE_DIR", "the session directory")
    elif kind == "RedisBackend":
        yield from _redis(app, t.cast("RedisBackend", backend))


def _in_memory(setting: str, value: str) -> Finding:
    return Finding(
        "serversession.E008",
        setting,
        value,
        "Sessions live in the memory of one process: a restart or deploy signs everyone out,"
        " and each worker process sees only the sessions it created itself.",
        "use SERVERSESSION_BACKEND = 'redis', or 'sqlalchemy' on a database the workers share.",
    )


def multi_host_signs() -> list[str]:
    """What suggests that several hosts serve the app, each with a disk of its own.

    Only the platforms' own variables count: a proxy in front of one host
    (and werkzeug's ProxyFix) is as common on one host as on many.
    """
    return [f"{name} is set ({where})" for name, where in PLATFORM_VARIABLES if name in os.environ]


def _one_host(setting: str, what: str) -> t.Iterator[Finding]:
    signs = multi_host_signs()
    if signs:
        yield Finding(
            "serversession.W009",
            setting,
            None,
            f"The app looks multi-host ({'; '.join(signs)}), but {what} is on this host's"
            " disk: each host would keep sessions of its own, and a user sent to another"
            " host is signed out.",
            "use SERVERSESSION_BACKEND = 'redis', or 'sqlalchemy' on a database server all"
            " hosts share; if one host serves the app after all, pass --ignore"
            " serversession.W009.",
        )


def _unreachable(setting: str, value: str, problem: StoreUnreachable) -> Finding:
    return Finding(
        "serversession.E010",
        setting,
        value,
        f"The check could not reach the session store ({problem}), so every request that"
        " needs a session would fail with 503.",
        "start the server or correct the address; if this host is not meant to reach it"
        " (a build machine), run the check where the app runs.",
    )


def _unreadable(setting: str, value: str, problem: UnreadableSetting) -> Finding:
    return Finding(
        "serversession.W011",
        setting,
        value,
        f"The server refused to show it ({problem}), so the check could not read it and"
        " does not guess.",
        "look the setting up in the provider's console or documentation, and pass"
        " --ignore serversession.W011 once it is known to be right.",
    )


def _sql(app: Flask, backend: SQLAlchemyBackend) -> t.Iterator[Finding]:
    url = backend.engine.url
    shown = shown_url(url.render_as_string(hide_password=True))
    setting = (
        "SERVERSESSION_SQLALCHEMY"
        if app.config.get("SERVERSESSION_SQLALCHEMY") is not None
        else "SERVERSESSION_SQLALCHEMY_URI"
    )
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:"):
            yield _in_memory(setting, repr(shown))
        else:
            yield from _one_host(setting, f"the SQLite file {url.database!r}")
        return
    postgres = url.get_backend_name() == "postgresql"
    try:
        name = "synchronous_commit" if postgres else None
        server_value = bounded(lambda: sql_setting(backend.engine, name))
    except StoreUnreachable as e:
        yield _unreachable(setting, repr(shown), e)
        return
    except UnreadableSetting as e:
        if backend.synchronous_commit is None:
            yield _unreadable("PostgreSQL synchronous_commit", "unknown", e)
        return
    if backend.synchronous_commit is False:
        yield _synchronous_commit("SERVERSESSION_SQLALCHEMY_SYNCHRONOUS_COMMIT", "False")
    elif backend.synchronous_commit is None and server_value == "off":
        yield _synchronous_commit("PostgreSQL synchronous_commit", "'off'")


def _synchronous_commit(setting: str, value: str) -> Finding:
    return Finding(
        "serversession.W014",
        setting,
        value,
        "PostgreSQL answers a session write before it reaches the disk, so a crash of the"
        " database server can lose sign-ins and sign-outs the app was told had been saved.",
        "set SERVERSESSION_SQLALCHEMY_SYNCHRONOUS_COMMIT = True, or turn synchronous_commit"
        " on for the app's role (ALTER ROLE ... SET synchronous_commit = on), its database"
        " or in postgresql.conf.",
    )


def _directory(path: str) -> t.Iterator[Finding]:
    setting = "SERVERSESSION_FILE_DIR"
    try:
        chain = directory_chain(path)
    except StoreUnreachable as e:
        yield _unreachable(setting, repr(path), e)
        return
    (root, st), parents = chain[0], chain[1:]
    mode = st.st_mode & 0o7777
    problems = []
    if mode & 0o002:
        problems.append("others can write it")
    if mode & 0o020:
        problems.append("its group can write it")
    if st.st_uid != os.geteuid():
        problems.append(f"it belongs to uid {st.st_uid}, not to uid {os.geteuid()} (this user)")
    if problems:
        yield Finding(
            "serversession.E015",
            setting,
            f"{root!r} (mode {mode:04o})",
            f"Whoever else can write the session directory can plant, swap or delete sessions"
            f" ({', '.join(problems)}), and the app refuses to use it.",
            f"chmod 0700 {root} (and chown it to the user the app runs as).",
        )
    for parent, pst in parents:
        pmode = pst.st_mode & 0o7777
        if pmode & 0o002 and not pmode & 0o1000:
            yield Finding(
                "serversession.E015",
                setting,
                f"parent {parent!r} (mode {pmode:04o})",
                "Others can write a parent of the session directory and it has no sticky"
                " bit, so they can move the session directory away and put their own in its"
                " place.",
                f"chmod o-w {parent} (or chmod +t {parent}), or keep sessions elsewhere.",
            )


def _redis_where(app: Flask) -> tuple[str, str]:
    """The config key that names the app's Redis server, and its value to show."""
    if app.config.get("SERVERSESSION_REDIS") is not None:
        return "SERVERSESSION_REDIS", "a client"
    url = str(app.config.get("SERVERSESSION_REDIS_URL"))
    return "SERVERSESSION_REDIS_URL", repr(shown_url(url))


def _redis(app: Flask, backend: RedisBackend) -> t.Iterator[Finding]:
    try:
        names = ("maxmemory-policy", "save", "appendonly")
        nodes = bounded(lambda: redis_settings(backend.client, names))
    except StoreUnreachable as e:
        yield _unreachable(*_redis_where(app), e)
        return
    except UnreadableSetting as e:
        yield _unreadable("Redis maxmemory-policy, save, appendonly", "unknown", e)
        return
    for node, settings in nodes.items():
        prefix = f"Redis {node} " if len(nodes) > 1 else "Redis "
        policy = settings["maxmemory-policy"]
        if EVICTING_POLICY.fullmatch(policy):
            chosen = (
                "any key"
                if policy.startswith("allkeys")
                else "any key with an expiry, as every session has"
            )
            yield Finding(
                "serversession.E012",
                f"{prefix}maxmemory-policy",
                repr(policy),
                f"When Redis reaches maxmemory it deletes {chosen}, so live sessions vanish"
                " and their users are signed out at random.",
                "CONFIG SET maxmemory-policy noeviction (and the same in redis.conf): a full"
                " Redis then refuses writes, which the app reports, instead of dropping"
                " sessions; or give sessions a Redis of their own.",
            )
        if settings["save"].strip() == "" and settings["appendonly"] == "no":
            yield Finding(
                "serversession.W013",
                f"{prefix}save, appendonly",
                "'' and 'no'",
                "Redis keeps sessions only in memory, so a restart of the server signs"
                " everyone out.",
                "turn on AOF (appendonly yes) or RDB snapshots (e.g. save 3600 1 300 100) in"
                " redis.conf, or the persistence option of a managed Redis.",
            )
