from __future__ import annotations

import json
import os
import threading
import typing as t
from datetime import datetime
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc

from ..errors import BackendError
from ..errors import ConfigError
from ..log import logger
from ._direct import Runner
from ._sql import CREATED
from ._sql import DATA
from ._sql import EXPIRES
from ._sql import extra_bind
from ._sql import KEY
from ._sql import merged
from ._sql import NOW
from ._sql import OWNER
from ._sql import plain
from ._sql import serializer_for
from ._sql import shape_of
from ._sql import sqlite_on_connect
from ._sql import twice
from ._sql import utc
from ._sql_dialects import statements_for
from ._sql_users import add_owner
from ._sql_users import check_owner
from ._sql_users import records_of
from .base import Backend
from .base import check_size
from .base import CorruptRecordError
from .base import data_size
from .base import Delta
from .base import Record

if t.TYPE_CHECKING:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

_T = t.TypeVar("_T")
_COLUMNS = ("key", "data", "created_at", "expires_at")
_SET_IF_LIVE: tuple[str, tuple[str, ...]] = ("set_if_live", ())


def make_table(
    name: str,
    metadata: sa.MetaData,
    extra_columns: t.Sequence[sa.Column[t.Any]] = (),
    *,
    user_index: bool = False,
) -> sa.Table:
    """Return the session table ``name`` of ``metadata``, defining it if needed.

    A table of that name already in ``metadata`` (a second app sharing it, or
    one declared for migrations) is reused when it has the expected columns;
    the user index's column is added to it if missing.
    An Alembic ``env.py`` without Flask-SQLAlchemy can call it on its
    ``target_metadata`` to declare the session table for autogenerate.

    :param name: the table name.
    :param metadata: the metadata that holds the table.
    :param extra_columns: columns added after the four standard ones.
    :param user_index: add the indexed ``owner`` column of the user index
        (``SERVERSESSION_USER_KEY``).

    .. versionchanged:: 0.2
        The ``user_index`` parameter.
    """
    if user_index and any(c.name == OWNER for c in extra_columns):
        raise ConfigError(
            f"The extra column {OWNER!r} of table {name!r} has the name of the user index's"
            " column (SERVERSESSION_USER_KEY). Rename the extra column."
        )
    existing = metadata.tables.get(f"{metadata.schema}.{name}" if metadata.schema else name)
    if existing is not None:
        wanted = [*_COLUMNS, *(c.name for c in extra_columns)]
        missing = [c for c in wanted if c not in existing.c]
        if missing:
            raise ConfigError(
                f"Table {name!r} is already defined in this MetaData without the"
                f" columns {missing}. Use another table name, or define it with them."
            )
        if user_index and OWNER not in existing.c:
            # Another app of this metadata runs without the user index.
            add_owner(existing)
        return existing
    table = sa.Table(
        name,
        metadata,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
        # A Column belongs to one Table; copies let several apps share one config.
        *(c._copy() for c in extra_columns),
    )
    if user_index:
        add_owner(table)
    return table


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

    #: Rows deleted per transaction by :meth:`purge_expired`.
    purge_batch_size = 2_000
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

    @classmethod
    def from_url(cls, url: str | sa.URL, **kwargs: t.Any) -> SQLAlchemyBackend:
        """Create an engine for ``url`` and a backend that owns it.

        For a SQLite file, the directory is created and connections use WAL
        and a 30 second busy timeout, so several worker processes can share
        it. Nothing connects until first use.

        :param url: a database URL, e.g. ``"postgresql+psycopg://host/db"``.
        :param kwargs: passed to the constructor.
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
        if url.get_backend_name() == "sqlite":
            event.listen(engine, "connect", sqlite_on_connect(wal=not memory))
        backend = cls(engine, **kwargs)
        backend._owns_engine = True
        return backend

    @classmethod
    def from_flask_sqlalchemy(
        cls,
        db: SQLAlchemy,
        *,
        bind_key: str | None = None,
        app: Flask | None = None,
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
        if app is None:
            engines = _fsa_engines(db)
        else:
            with app.app_context():
                engines = _fsa_engines(db)
        if bind_key not in engines:
            known = ", ".join(repr(k) for k in engines)
            raise ConfigError(
                f"Flask-SQLAlchemy has no bind {bind_key!r} for this app (it has {known})."
                " Add it to SQLALCHEMY_BINDS, or use one of those."
            )
        metadata = db.metadatas.get(bind_key)
        if metadata is None:
            metadata = db._make_metadata(bind_key)
        kwargs.setdefault("metadata", metadata)
        return cls(engines[bind_key], **kwargs)

    def _describe(self) -> str:
        url = self.engine.url
        where = f"{url.get_backend_name()} database {url.database!r}"
        return f"{where} on {url.host}" if url.host else where

    def _error(self, action: str, e: exc.SQLAlchemyError) -> BackendError:
        # The driver's own message: SQLAlchemy's adds the statement and parameters.
        detail = e.orig if isinstance(e, exc.DBAPIError) else e
        message = str(detail).strip() or type(detail).__name__
        return BackendError(
            f"Could not {action} in table {self.table.name!r} of the {self._describe()}: {message}"
        )

    def _ensure_table(self) -> None:
        with self._ready_lock:
            if self._ready:
                return
            try:
                twice(self._create_table)
            except exc.SQLAlchemyError as e:
                raise self._error("create the session table", e) from e
            self._ready = True

    def _create_table(self) -> None:
        try:
            self.table.create(self.engine, checkfirst=True)
        except exc.DatabaseError:
            # Another process created it between the check and the create.
            if not sa.inspect(self.engine).has_table(self.table.name, self.table.schema):
                raise
        if self.user_index:
            check_owner(self.engine, self.table)

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

    def _extra_values(self, values: t.Mapping[str, t.Any] | None) -> dict[str, t.Any]:
        if self.extras is None or values is None:
            return {}
        result = dict(self.extras(values))
        unknown = result.keys() - self._extra_names
        if unknown:
            raise ValueError(
                f"The extras callback returned {sorted(unknown)}, which are not extra columns"
                f" of table {self.table.name!r} ({sorted(self._extra_names)})."
            )
        return result

    def _read(self, key: str) -> t.Sequence[t.Any] | None:
        """The row of ``key`` as the dialect's select reads it.

        :raises CorruptRecordError: the driver cannot convert a value of the row.
        """
        try:
            rows = self._runner.execute("read", self._sql.read_query, {KEY: key}, True)
        except (TypeError, ValueError) as e:
            raise CorruptRecordError(f"Session row {key} cannot be read: {e}") from e
        return rows[0] if rows else None

    def _live_data(self, row: t.Sequence[t.Any] | None, now: datetime) -> dict[str, str] | None:
        """The data of ``row``; None unless it is live and readable."""
        try:
            record = None if row is None else self._sql.record(row)
        except CorruptRecordError:
            return None
        return record.data if record is not None and record.expires_at > now else None

    def _set_if_live(self, values: dict[str, t.Any], extras: tuple[str, ...]) -> bool:
        name = ("set_if_live", extras)
        return bool(
            self._runner.execute(name, lambda: self._sql.set_if_live(extras), values, False)
        )

    def _touch(self, values: dict[str, t.Any]) -> t.Any:
        return self._runner.execute(_SET_IF_LIVE, self._build_touch, values, False)

    def _build_touch(self) -> sa.Update:
        return self._sql.set_if_live(())

    def _merge(self, delta: Delta, values: dict[str, t.Any], extras: tuple[str, ...]) -> bool:
        """Apply ``delta`` to the live row; ``values`` binds KEY, NOW, EXPIRES and ``extras``."""
        name = shape = shape_of(delta, extras)
        build = lambda: self._sql.merge(shape)  # noqa: E731
        texts = "".join([*delta.set, *delta.set.values(), *delta.deleted])
        if self._runner.exists(name, build) and plain(texts):
            try:
                values.update(self._sql.merge_values(delta))
                if self._runner.execute(name, build, values, False):
                    return True
            except exc.DataError:
                # jsonb refuses the stored text (not JSON, or a NUL that an
                # older version wrote); Python reads it under the row lock.
                pass
            else:
                # No row matched: only now find out why, with one more read.
                data = self._live_data(self._read(values[KEY]), values[NOW])
                if data is None:
                    return False
                check_size(data_size(data), data_size(merged(data, delta)), delta.max_size)
                # It fits now: the row changed since the UPDATE.
        return self._merge_locked(delta, values, extras)

    def _merge_locked(
        self, delta: Delta, values: dict[str, t.Any], extras: tuple[str, ...]
    ) -> bool:
        """:meth:`_merge` in Python, under a row lock."""
        key = values[KEY]
        with self.engine.begin() as conn:
            data = self._live_data(self._sql.read_locked(conn, key), values[NOW])
            if data is None:
                return False
            new = merged(data, delta)
            if delta.max_size is not None:
                check_size(data_size(data), data_size(new), delta.max_size)
            changes = {"data": json.dumps(new), "expires_at": values[EXPIRES]}
            changes.update({name: values[extra_bind(name)] for name in extras})
            statement = sa.update(self.table).where(self.table.c.key == key)
            conn.execute(statement.values(changes))
            return True

    def _page(self, live: sa.ColumnElement[bool]) -> list[tuple[str, sa.Row[t.Any] | None]]:
        """Return ``(key, row)`` pairs, the row None where the driver cannot read it."""
        c = self.table.c

        def read() -> list[tuple[str, sa.Row[t.Any] | None]]:
            with self._runner.direct.connect() as conn:
                try:
                    query = self._sql.select().where(live).order_by(c.key)
                    rows = conn.execute(query.limit(self.items_page_size)).all()
                    return [(row.key, row) for row in rows]
                except (TypeError, ValueError):
                    keys = sa.select(c.key).where(live).order_by(c.key)
                    found = conn.execute(keys.limit(self.items_page_size)).scalars().all()
                    return [(key, None) for key in found]

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
        extra = self._extra_values(values)
        names = tuple(sorted(extra))
        parameters = {extra_bind(name): extra[name] for name in names}
        if owner:
            names += (OWNER,)
            parameters[extra_bind(OWNER)] = user
        return names, parameters

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
        # With the index, every create sets the owner: it may replace another's row.
        extras, values = self._extras_of(
            record.values, self.user_index or record.user is not None, record.user
        )
        values[KEY] = key
        values[DATA] = json.dumps(record.data)
        values[CREATED] = utc(record.created_at)
        values[EXPIRES] = utc(record.expires_at)
        name = ("upsert", extras)
        build = lambda: self._sql.upsert_statement(extras)  # noqa: E731
        if self._runner.exists(name, build):
            self._run("create a session", self._runner.execute, name, build, values, False)
            return

        def write() -> None:
            with self._runner.write_connection() as conn:
                self._sql.upsert(conn, values, extras)

        self._run("create a session", write)

    def update(self, key: str, delta: Delta, now: datetime) -> bool:
        extras, values = self._extras_of(delta.values, delta.user_changed, delta.user)
        values[KEY] = key
        values[NOW] = utc(now)
        values[EXPIRES] = utc(delta.expires_at)
        if delta.set or delta.deleted:
            return self._run("save a session", self._merge, delta, values, extras)
        if extras:
            return self._run("save a session", self._set_if_live, values, extras)
        return bool(self._run("save a session", self._touch, values))

    def touch(self, key: str, expires_at: datetime, now: datetime) -> bool:
        values = {KEY: key, NOW: utc(now), EXPIRES: utc(expires_at)}
        return bool(self._run("renew a session", self._touch, values))

    def _take(self, key: str) -> t.Sequence[t.Any] | None:
        if self._runner.exists("take", self._sql.take_statement):
            rows = self._runner.execute("take", self._sql.take_statement, {KEY: key}, True)
            return rows[0] if rows else None
        with self._runner.write_connection() as conn:
            return self._sql.take(conn, key)

    def take(self, key: str, now: datetime) -> Record | None:
        row = self._run("take a session", self._take, key)
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
        expires_at = self.table.c.expires_at
        now = utc(now)
        stale = expires_at <= now
        if longest_lifetime is not None:
            try:
                horizon = now + longest_lifetime
            except OverflowError:
                pass
            else:
                # No save sets an expiry this far ahead ('infinity', say):
                # such a row would otherwise never expire.
                stale = sa.or_(stale, expires_at > horizon)

        def batch() -> int:
            with self._runner.direct.begin() as conn:
                return self._sql.purge_batch(conn, stale, self.purge_batch_size)

        total = 0
        while True:
            # Short transactions, so SQLite's write lock is never held for long.
            removed = self._run("purge expired sessions", batch)
            total += removed
            if removed < self.purge_batch_size:
                return total

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
        return records_of(self, user, utc(now))

    def clear(self) -> int:
        def remove() -> int:
            with self._runner.direct.begin() as conn:
                return int(conn.execute(sa.delete(self.table)).rowcount)

        return self._run("clear sessions", remove)

    def close(self) -> None:
        self._runner.close()
        if self._owns_engine:
            self.engine.dispose()


def _fsa_engines(db: SQLAlchemy) -> t.Mapping[str | None, sa.Engine]:
    try:
        return db.engines
    except RuntimeError as e:
        raise ConfigError(
            "The Flask-SQLAlchemy db is not set up for this app. Call db.init_app(app)"
            " before ServerSession.init_app(app)."
        ) from e
