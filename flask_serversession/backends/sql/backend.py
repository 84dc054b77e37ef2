from __future__ import annotations

import functools
import json
import threading
import typing as t
from datetime import datetime
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy import exc

from ...errors import BackendError
from ...errors import ConfigError
from ...log import logger
from ..base import Backend
from ..base import CorruptRecordError
from ..base import Delta
from ..base import Record
from . import saves
from .dialects import statements_for
from .engines import describe
from .engines import engine_from_url
from .engines import flask_sqlalchemy_bind
from .engines import serializer_for
from .purge import Pacing
from .purge import purge
from .runner import Runner
from .runner import twice
from .statements import CREATED
from .statements import DATA
from .statements import EXPIRES
from .statements import KEY
from .statements import NOW
from .statements import utc
from .table import create_table
from .table import make_table
from .users import records_of

if t.TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

    from .engines import App

_T = t.TypeVar("_T")


class SQLAlchemyBackend(Backend):
    """Keep sessions in one row each of an SQL table, through an SQLAlchemy engine.

    The table has the columns ``key`` (hex sha256, primary key), ``data`` (a
    JSON object of serialized values by session key), ``created_at`` and
    ``expires_at`` (indexed), plus any ``extra_columns``. It is created on
    first use if missing. For migrations it is :attr:`table`, defined in
    ``metadata``: Flask-Migrate sees it when that is ``db.metadata``, as with
    :meth:`from_flask_sqlalchemy`; see :func:`make_table` for plain Alembic.

    A save changes only the keys it names, in one ``UPDATE`` on SQLite
    (``json_patch``) and PostgreSQL (``jsonb``) that also checks the size
    limit on the merged data, and under a row lock elsewhere, so concurrent
    requests changing different keys of one session both survive and cannot
    together pass the limit. A row that no save could have written (data that
    is not a JSON object of strings, timestamps that do not read, such as
    PostgreSQL's ``'infinity'``) raises
    :class:`~flask_serversession.backends.base.CorruptRecordError` on load.
    Connections come from ``engine`` and are committed on their own; the
    application's ``db.session`` is never used. An operation whose pooled
    connection died while idle (a database restart) runs once more on a new
    one. Where the pool shares one connection between threads (in-memory
    SQLite), operations run one at a time.

    On SQLite files and on PostgreSQL through psycopg, loads and saves run
    statements compiled once, each committed on its own (one round trip), on
    connections that the backend makes through ``engine`` (its URL,
    ``connect_args`` and ``connect`` listeners apply) and keeps outside its
    pool: at most one per operation in progress, replaced after
    ``pool_recycle``, closed by :meth:`close`. psycopg prepares a statement
    after its fifth run on a connection, as it does for SQLAlchemy; behind a
    pgbouncer older than 1.21 in transaction mode, turn that off with
    ``connect_args={"prepare_threshold": None}``. Engines whose statements are
    observed (``before_cursor_execute`` or ``after_cursor_execute``
    listeners, as tracing tools add) or whose pool pings connections
    (``pool_pre_ping``) run everything through SQLAlchemy.

    With ``user_index``, the table has one more column, ``owner``: the user
    a session belongs to (``SERVERSESSION_USER_KEY``), NULL for none, written
    by the same statement as the rest of a save, and indexed (sessions
    without a user left out of the index on SQLite and PostgreSQL), so
    :meth:`user_records` is one indexed ``SELECT``. A table that exists
    without the column is not altered: every operation raises
    :class:`~flask_serversession.ConfigError` naming the statements that add
    it, until they have run.

    :param engine: the engine to connect with.
    :param table_name: the name of the session table.
    :param metadata: where to define the table; a new ``MetaData`` if None.
    :param extra_columns: more columns, filled by ``extras``.
    :param extras: called with the decoded session on every create and save;
        returns values by extra column name, e.g. ``{"user_id": 1}``, so the
        app can query sessions in SQL.
    :param synchronous_commit: PostgreSQL only: the ``synchronous_commit``
        setting of session writes, set once on each of the backend's own
        connections (through SQLAlchemy, with ``SET LOCAL`` in each write's
        transaction). False answers a save before its commit reaches the
        disk: a crash of the database server (not of the app) may lose the
        last fraction of a second of saves, never corrupt one. None keeps
        the server's setting.
    :param user_index: keep the user index that ``SERVERSESSION_USER_KEY``
        needs (set from config when that key is set).

    .. versionchanged:: 0.2
        The ``user_index`` parameter.
    """

    #: Most rows deleted per transaction by :meth:`purge_expired`.
    purge_batch_size = 2_000
    #: SQLite: how long one purge transaction may hold the database's write
    #: lock; each batch is sized from the one before to take about this long.
    purge_batch_seconds = 0.015
    #: SQLite: the purge's wait after each batch, in which saves take the lock.
    purge_pause_seconds = 0.010
    #: PostgreSQL: a purge that removed this share of the table's rows (and at
    #: least 1,000) then runs ``VACUUM (ANALYZE)`` on it; None never does.
    purge_vacuum_share: float | None = 0.1
    #: Rows read per query by :meth:`items`.
    items_page_size = 1_000

    def __init__(
        self,
        engine: sa.Engine,
        *,
        table_name: str = "serversession",
        metadata: sa.MetaData | None = None,
        extra_columns: t.Sequence[sa.Column[t.Any]] = (),
        extras: t.Callable[[t.Mapping[str, t.Any]], t.Mapping[str, t.Any]] | None = None,
        synchronous_commit: bool | None = None,
        user_index: bool = False,
    ) -> None:
        if synchronous_commit is not None and engine.dialect.name != "postgresql":
            raise ConfigError(
                f"synchronous_commit is a PostgreSQL setting; this engine is"
                f" {engine.dialect.name}. Leave it None."
            )
        self.engine = engine
        #: The session :class:`~sqlalchemy.schema.Table`, for queries and migrations.
        self.table = make_table(
            table_name,
            sa.MetaData() if metadata is None else metadata,
            extra_columns,
            user_index=user_index,
        )
        self.extras = extras
        #: Whether the backend keeps the user index (the ``owner`` column).
        self.user_index = user_index
        self._extra_names = frozenset(c.name for c in extra_columns)
        self._sql = statements_for(self.table, engine.dialect, user_index=user_index)
        self._serial = serializer_for(engine)
        self._runner = Runner(engine, synchronous_commit)
        self._owns_engine = False
        self._ready = False
        self._ready_lock = threading.Lock()

    @property
    def synchronous_commit(self) -> bool | None:
        """The ``synchronous_commit`` that session writes set; None: the server's.

        .. versionadded:: 0.3
        """
        return self._runner.synchronous_commit

    @classmethod
    def from_url(cls, url: str | sa.URL, **kwargs: t.Any) -> SQLAlchemyBackend:
        """Create an engine for ``url`` and a backend that owns it.

        For a SQLite file, the directory is created and connections use WAL
        and a 30 second busy timeout, so several worker processes can share
        it. Nothing connects until first use.

        :param url: a database URL, e.g. ``"postgresql+psycopg://host/db"``.
        :param kwargs: passed to the constructor.
        """
        engine = engine_from_url(url)
        backend = cls(engine, **kwargs)
        backend._owns_engine = True
        return backend

    @classmethod
    def from_flask_sqlalchemy(
        cls,
        db: SQLAlchemy,
        *,
        bind_key: str | None = None,
        app: App | None = None,
        **kwargs: t.Any,
    ) -> SQLAlchemyBackend:
        """Use the engine of a Flask-SQLAlchemy ``db`` for ``app``.

        The table goes in the bind's metadata, usually ``db.metadata``, so
        ``db.create_all()`` and Flask-Migrate include it.

        :param db: the app's ``SQLAlchemy`` extension; ``db.init_app(app)``
            must have run.
        :param bind_key: the bind to use; the default database if None.
        :param app: the app; the current app if None.
        :param kwargs: passed to the constructor.
        """
        engine, metadata = flask_sqlalchemy_bind(db, bind_key, app)
        kwargs.setdefault("metadata", metadata)
        return cls(engine, **kwargs)

    def _error(self, action: str, e: exc.SQLAlchemyError) -> BackendError:
        # The driver's own message: SQLAlchemy's adds the statement and parameters.
        detail = e.orig if isinstance(e, exc.DBAPIError) else e
        message = str(detail).strip() or type(detail).__name__
        where = f"table {self.table.name!r} of the {describe(self.engine)}"
        return BackendError(f"Could not {action} in {where}: {message}")

    def _ensure_table(self) -> None:
        with self._ready_lock:
            if self._ready:
                return
            try:
                twice(create_table, self.engine, self.table, self.user_index)
            except exc.SQLAlchemyError as e:
                raise self._error("create the session table", e) from e
            self._ready = True

    def _run(self, action: str, operation: t.Callable[..., _T], *args: t.Any) -> _T:
        """Run one operation on a ready table; store failures raise :class:`BackendError`."""
        if not self._ready:
            self._ensure_table()
        try:
            if self._serial is None:
                return twice(operation, *args)
            with self._serial:
                return twice(operation, *args)
        except exc.SQLAlchemyError as e:
            raise self._error(action, e) from e

    def _page(self, live: sa.ColumnElement[bool]) -> list[tuple[str, sa.Row[t.Any] | None]]:
        def read() -> list[tuple[str, sa.Row[t.Any] | None]]:
            with self._runner.direct.connect() as conn:
                return self._sql.page(conn, live, self.items_page_size)

        return self._run("list sessions", read)

    def _extras_of(
        self, values: t.Mapping[str, t.Any] | None, owner: bool = False, user: str | None = None
    ) -> tuple[tuple[str, ...], dict[str, t.Any]]:
        """The extra columns to set, and their parameters; with ``owner``, the user's too.

        The owner column is set as an extra column is, by the statement of the
        save itself: a change of user costs no statement of its own.
        """
        if owner and not self.user_index:
            raise ConfigError(
                "SERVERSESSION_USER_KEY needs the user index of SQLAlchemyBackend, which"
                " this one was built without: pass it user_index=True."
            )
        fill, names, table = self.extras, self._extra_names, self.table.name
        return saves.extra_parameters(fill, names, table, values, owner=owner, user=user)

    def load(self, key: str) -> Record | None:
        if not self._ready:
            self._ensure_table()  # its errors are no damage of the row
        try:
            rows = self._run(
                "load a session",
                self._runner.execute,
                "read",
                self._sql.read_query,
                {KEY: key},
                True,
            )
        except (TypeError, ValueError) as e:
            raise CorruptRecordError(f"Session row {key} cannot be read: {e}") from e
        return self._sql.record(rows[0]) if rows else None

    def create(self, key: str, record: Record) -> None:
        extras, values = self._row(key, record)
        self._run("create a session", saves.create, self._runner, self._sql, values, extras)

    def add(self, key: str, record: Record, now: datetime) -> bool:
        extras, values = self._row(key, record)
        values[NOW] = utc(now)
        return self._run("add a session", saves.add, self._runner, self._sql, values, extras)

    def _row(self, key: str, record: Record) -> tuple[tuple[str, ...], dict[str, t.Any]]:
        """The extra columns a whole row of ``record`` sets, and its parameters."""
        # With the index, every create sets the owner: it may replace another's row.
        owner = self.user_index or record.user is not None
        extras, values = self._extras_of(record.values, owner, record.user)
        values[KEY] = key
        values[DATA] = json.dumps(record.data)
        values[CREATED] = utc(record.created_at)
        values[EXPIRES] = utc(record.expires_at)
        return extras, values

    def update(self, key: str, delta: Delta, now: datetime) -> bool:
        extras, values = self._extras_of(delta.values, delta.user_changed, delta.user)
        values[KEY] = key
        values[NOW] = utc(now)
        values[EXPIRES] = utc(delta.expires_at)
        if delta.set or delta.deleted:
            return self._run(
                "save a session", saves.merge, self._runner, self._sql, delta, values, extras
            )
        if extras:
            return self._run(
                "save a session", saves.set_if_live, self._runner, self._sql, values, extras
            )
        return self._run("save a session", saves.touch, self._runner, self._sql, values)

    def touch(self, key: str, expires_at: datetime, now: datetime) -> bool:
        values = {KEY: key, NOW: utc(now), EXPIRES: utc(expires_at)}
        return self._run("renew a session", saves.touch, self._runner, self._sql, values)

    def take(self, key: str, now: datetime) -> Record | None:
        row = self._run("take a session", saves.take, self._runner, self._sql, key)
        if row is None:
            return None
        try:
            record = self._sql.record(row)
        except CorruptRecordError as e:
            logger.error("Removed a damaged session record: %s", e)
            return None
        return record if record.expires_at > utc(now) else None

    def delete(self, key: str) -> None:
        build, values = self._sql.delete_statement, {KEY: key}
        self._run("delete a session", self._runner.execute, "delete", build, values, False)

    def purge_expired(self, now: datetime, *, longest_lifetime: timedelta | None = None) -> int:
        stale = self._sql.stale(utc(now), longest_lifetime)
        pacing = Pacing(self.purge_batch_size, self.purge_batch_seconds, self.purge_pause_seconds)
        run = functools.partial(self._run, "purge expired sessions")
        return purge(self._runner.direct, self._sql, stale, pacing, run, self.purge_vacuum_share)

    def count(self, now: datetime) -> int:
        statement = sa.select(sa.func.count()).where(self.table.c.expires_at > utc(now))

        def read() -> int:
            with self._runner.direct.connect() as conn:
                return int(conn.execute(statement).scalar_one())

        return self._run("count sessions", read)

    def items(self, now: datetime) -> t.Iterator[tuple[str, Record]]:
        c = self.table.c
        after = ""
        while True:
            # Pages by key, each on a short connection: nothing stays open between yields.
            page = self._page(sa.and_(c.expires_at > utc(now), c.key > after))
            for key, row in page:
                try:
                    record = self.load(key) if row is None else self._sql.record(row)
                except CorruptRecordError as e:
                    logger.error("Skipping a damaged session record: %s", e)
                    continue
                if record is not None:
                    yield key, record
            if len(page) < self.items_page_size:
                return
            after = page[-1][0]

    def user_records(self, user: str, now: datetime) -> list[tuple[str, Record]]:
        """Return ``(key, record)`` for the live sessions of ``user``, in one indexed ``SELECT``.

        Rows that cannot be read are logged and skipped, as by :meth:`items`.

        :raises ConfigError: the backend keeps no user index, or its table
            lacks the ``owner`` column.

        .. versionadded:: 0.2
        """
        if not self.user_index:
            raise ConfigError(
                "This SQLAlchemyBackend keeps no user index: build it with user_index=True,"
                " as config does when SERVERSESSION_USER_KEY is set."
            )
        if not self._ready:
            self._ensure_table()  # its errors are no damage of a row
        return records_of(self._run, self._runner, self._sql, self.load, user, utc(now))

    def clear(self) -> int:
        def remove() -> int:
            with self._runner.direct.begin() as conn:
                return int(conn.execute(sa.delete(self.table)).rowcount)

        return self._run("clear sessions", remove)

    def close(self) -> None:
        self._runner.close()
        if self._owns_engine:
            self.engine.dispose()
