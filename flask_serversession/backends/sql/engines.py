"""The SQL backend's engines: made from a URL or taken from Flask-SQLAlchemy, and set up
for how the backend shares them between threads and processes."""

from __future__ import annotations

import contextlib
import os
import threading
import typing as t
import weakref

import sqlalchemy as sa
from sqlalchemy import event

from ...errors import ConfigError

if t.TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

_SQLITE_BUSY_TIMEOUT_MS = 30_000

# One lock per pool that hands a single connection to every thread.
_SHARED_CONNECTION_LOCKS: weakref.WeakKeyDictionary[sa.Pool, threading.RLock] = (
    weakref.WeakKeyDictionary()
)
_SHARED_CONNECTION_LOCKS_GUARD = threading.Lock()


class App(t.Protocol):
    """What the backend uses of a Flask app: the app context that Flask-SQLAlchemy needs."""

    def app_context(self) -> t.ContextManager[t.Any]: ...


def engine_from_url(url: str | sa.URL) -> sa.Engine:
    """Create an engine for ``url``; for SQLite, one that worker processes can share.

    The directory of a SQLite file is created, and its connections use WAL
    and a busy timeout; an in-memory SQLite database is one connection
    shared by all threads. Nothing connects yet.
    """
    url = sa.make_url(url)
    engine_options: dict[str, t.Any] = {}
    memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
    if memory:
        # One shared connection: a pool of in-memory databases holds different data.
        engine_options = {
            "poolclass": sa.StaticPool,
            "connect_args": {"check_same_thread": False},
        }
    elif url.get_backend_name() == "sqlite" and url.database is not None:
        directory = os.path.dirname(os.path.abspath(url.database))
        os.makedirs(directory, exist_ok=True)
    engine = sa.create_engine(url, **engine_options)
    if url.get_backend_name() == "sqlite" and not memory and url.database is not None:
        database = url.database
        # At the first connection, not now: nothing touches the store before first use.
        event.listen(engine, "do_connect", lambda *args: _create_private(database))
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", sqlite_on_connect(wal=not memory))
    return engine


def _create_private(path: str) -> None:
    """Create the SQLite file ``path`` readable by its owner only, unless it exists.

    Sessions are as secret as the session files, which are 0600; SQLite would
    create the file with the process's umask, usually world-readable. Its
    ``-wal`` and ``-shm`` files take the database file's mode.
    """
    if path.startswith("file:"):
        return  # a SQLite URI filename; SQLite opens it as it says
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def flask_sqlalchemy_bind(
    db: SQLAlchemy, bind_key: str | None, app: App | None
) -> tuple[sa.Engine, sa.MetaData]:
    """The engine and metadata of Flask-SQLAlchemy's bind ``bind_key`` for ``app``.

    :raises ConfigError: ``db`` is not set up for the app, or has no such bind.
    """
    if app is None:
        engines = _engines(db)
    else:
        with app.app_context():
            engines = _engines(db)
    if bind_key not in engines:
        known = ", ".join(repr(k) for k in engines)
        raise ConfigError(
            f"Flask-SQLAlchemy has no bind {bind_key!r} for this app (it has {known})."
            " Add it to SQLALCHEMY_BINDS, or use one of those."
        )
    metadata = db.metadatas.get(bind_key)
    if metadata is None:
        metadata = db._make_metadata(bind_key)
    return engines[bind_key], metadata


def _engines(db: SQLAlchemy) -> t.Mapping[str | None, sa.Engine]:
    try:
        return db.engines
    except RuntimeError as e:
        raise ConfigError(
            "The Flask-SQLAlchemy db is not set up for this app. Call db.init_app(app)"
            " before ServerSession.init_app(app)."
        ) from e


def describe(engine: sa.Engine) -> str:
    """The database of ``engine`` in words, for error messages (no password)."""
    url = engine.url
    where = f"{url.get_backend_name()} database {url.database!r}"
    return f"{where} on {url.host}" if url.host else where


def serializer_for(engine: sa.Engine) -> threading.RLock | None:
    """Return a lock held around each operation where all threads share one connection.

    A ``StaticPool`` (an in-memory SQLite database) gives every thread the same
    DBAPI connection, which cannot run two statements or transactions at once.
    """
    if not isinstance(engine.pool, sa.StaticPool):
        return None
    with _SHARED_CONNECTION_LOCKS_GUARD:
        return _SHARED_CONNECTION_LOCKS.setdefault(engine.pool, threading.RLock())


def sqlite_on_connect(*, wal: bool) -> t.Callable[[t.Any, t.Any], None]:
    """Return a connect listener: busy timeout, and WAL for a database file."""

    def on_connect(dbapi_connection: t.Any, connection_record: t.Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {_SQLITE_BUSY_TIMEOUT_MS}")
            if wal:
                cursor.execute("PRAGMA journal_mode = WAL")
                # With WAL, a commit survives an app crash without an fsync;
                # only a power loss may drop the last commits.
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    return on_connect
