from __future__ import annotations

import json
import os
import threading
import typing as t
from contextlib import contextmanager
from datetime import datetime
from datetime import timezone

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite

from ..errors import BackendError
from ..errors import ConfigError
from .base import Backend
from .base import CorruptRecordError
from .base import Delta
from .base import logger
from .base import Record

if t.TYPE_CHECKING:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

_COLUMNS = ("key", "data", "created_at", "expires_at")
_SQLITE_BUSY_TIMEOUT_MS = 30_000


def _utc(value: datetime) -> datetime:
    """Return ``value`` in UTC; SQLite drops the zone, so every value is stored in UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def make_table(
    name: str, metadata: sa.MetaData, extra_columns: t.Sequence[sa.Column[t.Any]] = ()
) -> sa.Table:
    """Return the session table ``name`` of ``metadata``, defining it if needed.

    A table of that name already in ``metadata`` (a second app sharing it, or
    one declared for migrations) is reused when it has the expected columns.
    An Alembic ``env.py`` without Flask-SQLAlchemy can call it on its
    ``target_metadata`` to declare the session table for autogenerate.

    :param name: the table name.
    :param metadata: the metadata that holds the table.
    :param extra_columns: columns added after the four standard ones.
    """
    existing = metadata.tables.get(f"{metadata.schema}.{name}" if metadata.schema else name)
    if existing is not None:
        wanted = [*_COLUMNS, *(c.name for c in extra_columns)]
        missing = [c for c in wanted if c not in existing.c]
        if missing:
            raise ConfigError(
                f"Table {name!r} is already defined in this MetaData without the"
                f" columns {missing}. Use another table name, or define it with them."
            )
        return existing
    return sa.Table(
        name,
        metadata,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False, index=True),
        # A Column belongs to one Table; copies let several apps share one config.
        *(c._copy() for c in extra_columns),
    )


class SQLAlchemyBackend(Backend):
    """Keep sessions in one row each of an SQL table, through an SQLAlchemy engine.

    The table has the columns ``key`` (hex sha256, primary key), ``data`` (a
    JSON object of serialized values by session key), ``created_at`` and
    ``expires_at`` (indexed), plus any ``extra_columns``. It is created on
    first use if missing. For migrations it is :attr:`table`, defined in
    ``metadata``: Flask-Migrate sees it when that is ``db.metadata``, as with
    :meth:`from_flask_sqlalchemy`; see :func:`make_table` for plain Alembic.

    A save changes only the keys it names, in one ``UPDATE`` on SQLite
    (``json_patch``) and PostgreSQL (``jsonb``), and a row lock elsewhere, so
    concurrent requests changing different keys of one session both survive.
    Connections come from ``engine`` and are committed on their own; the
    application's ``db.session`` is never used.

    :param engine: the engine to connect with.
    :param table_name: the name of the session table.
    :param metadata: where to define the table; a new ``MetaData`` if None.
    :param extra_columns: more columns, filled by ``extras``.
    :param extras: called with the decoded session on every create and save;
        returns values by extra column name, e.g. ``{"user_id": 1}``, so the
        app can query sessions in SQL.
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
    ) -> None:
        self.engine = engine
        # On PostgreSQL every operation is a single statement, so autocommit
        # saves the BEGIN and COMMIT round trips around each one.
        self._statements = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql"
            else engine
        )
        #: The session :class:`~sqlalchemy.schema.Table`, for queries and migrations.
        self.table = make_table(
            table_name, sa.MetaData() if metadata is None else metadata, extra_columns
        )
        self.extras = extras
        self._extra_names = frozenset(c.name for c in extra_columns)
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
            event.listen(engine, "connect", _sqlite_on_connect(wal=not memory))
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

    @contextmanager
    def _errors(self, action: str) -> t.Iterator[None]:
        try:
            yield
        except exc.SQLAlchemyError as e:
            # The driver's own message: SQLAlchemy's adds the statement and parameters.
            detail = e.orig if isinstance(e, exc.DBAPIError) else e
            message = str(detail).strip() or type(detail).__name__
            raise BackendError(
                f"Could not {action} in table {self.table.name!r} of the"
                f" {self._describe()}: {message}"
            ) from e

    def _ensure_table(self) -> None:
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            with self._errors("create the session table"):
                try:
                    self.table.create(self.engine, checkfirst=True)
                except exc.DatabaseError:
                    # Another process created it between the check and the create.
                    if not sa.inspect(self.engine).has_table(self.table.name, self.table.schema):
                        raise
            self._ready = True

    @contextmanager
    def _begin(self, action: str) -> t.Iterator[sa.Connection]:
        self._ensure_table()
        with self._errors(action), self._statements.begin() as conn:
            yield conn

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

    def _decode(self, key: str, data: t.Any) -> dict[str, str]:
        try:
            decoded = json.loads(data)
        except (TypeError, ValueError) as e:
            raise CorruptRecordError(f"Session row {key} has data that is not JSON: {e}") from e
        if not isinstance(decoded, dict) or not all(isinstance(v, str) for v in decoded.values()):
            raise CorruptRecordError(
                f"Session row {key} has data that is not a JSON object of strings."
            )
        return decoded

    def _record(self, row: sa.Row[t.Any]) -> Record:
        if not isinstance(row.created_at, datetime) or not isinstance(row.expires_at, datetime):
            raise CorruptRecordError(f"Session row {row.key} has invalid timestamps.")
        data = self._decode(row.key, row.data)
        return Record(data, _utc(row.created_at), _utc(row.expires_at))

    def _select(self) -> sa.Select[t.Any]:
        c = self.table.c
        return sa.select(c.key, c.data, c.created_at, c.expires_at)

    def _merged_data(self, conn: sa.Connection, delta: Delta, live: t.Any) -> t.Any:
        """Return the new ``data``: an SQL expression, or text; None if no live row."""
        data = self.table.c.data
        dialect = conn.dialect.name
        if dialect == "sqlite":
            # Values are strings, so a merge patch's null deletes and nothing nests.
            patch: dict[str, str | None] = dict.fromkeys(delta.deleted)
            patch.update(delta.set)
            return sa.func.json_patch(data, json.dumps(patch), type_=sa.Text)
        if dialect == "postgresql":
            merged: t.Any = sa.cast(data, postgresql.JSONB)
            if delta.deleted:
                deleted = sa.cast(sorted(delta.deleted), postgresql.ARRAY(sa.Text))
                merged = merged.op("-", return_type=postgresql.JSONB)(deleted)
            if delta.set:
                added = sa.cast(sa.literal(json.dumps(delta.set), sa.Text), postgresql.JSONB)
                merged = merged.op("||", return_type=postgresql.JSONB)(added)
            return sa.cast(merged, sa.Text)
        row = conn.execute(sa.select(self.table.c.key, data).where(live).with_for_update()).first()
        if row is None:
            return None
        stored = self._decode(row.key, row.data)
        values = {k: v for k, v in stored.items() if k not in delta.deleted}
        values.update(delta.set)
        return json.dumps(values)

    def _page(self, live: t.Any) -> list[tuple[str, t.Any]]:
        """Return ``(key, row)`` pairs, the row None where its timestamps do not parse."""
        c = self.table.c
        with self._errors("list sessions"), self._statements.connect() as conn:
            try:
                rows = conn.execute(
                    self._select().where(live).order_by(c.key).limit(self.items_page_size)
                )
                return [(row.key, row) for row in rows.all()]
            except (TypeError, ValueError):
                keys = sa.select(c.key).where(live).order_by(c.key).limit(self.items_page_size)
                return [(key, None) for key in conn.execute(keys).scalars().all()]

    def load(self, key: str) -> Record | None:
        self._ensure_table()
        with self._errors("load a session"), self._statements.connect() as conn:
            try:
                row = conn.execute(self._select().where(self.table.c.key == key)).first()
            except (TypeError, ValueError) as e:
                raise CorruptRecordError(f"Session row {key} cannot be read: {e}") from e
        return None if row is None else self._record(row)

    def create(self, key: str, record: Record) -> None:
        row = {
            "key": key,
            "data": json.dumps(record.data),
            "created_at": _utc(record.created_at),
            "expires_at": _utc(record.expires_at),
            **self._extra_values(record.values),
        }
        with self._begin("create a session") as conn:
            dialect = conn.dialect.name
            if dialect in ("sqlite", "postgresql"):
                insert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(self.table)
                changes = {k: insert.excluded[k] for k in row if k != "key"}
                conn.execute(
                    insert.values(row).on_conflict_do_update(
                        index_elements=[self.table.c.key], set_=changes
                    )
                )
                return
            updated = conn.execute(sa.update(self.table).where(self.table.c.key == key).values(row))
            if not updated.rowcount:
                conn.execute(sa.insert(self.table).values(row))

    def update(self, key: str, delta: Delta, now: datetime) -> bool:
        c = self.table.c
        changes: dict[str, t.Any] = {"expires_at": _utc(delta.expires_at)}
        changes.update(self._extra_values(delta.values))
        live = sa.and_(c.key == key, c.expires_at > _utc(now))
        with self._begin("save a session") as conn:
            if delta.set or delta.deleted:
                changes["data"] = self._merged_data(conn, delta, live)
                if changes["data"] is None:
                    return False
            return bool(conn.execute(sa.update(self.table).where(live).values(changes)).rowcount)

    def touch(self, key: str, expires_at: datetime, now: datetime) -> bool:
        c = self.table.c
        live = sa.and_(c.key == key, c.expires_at > _utc(now))
        with self._begin("renew a session") as conn:
            statement = sa.update(self.table).where(live).values(expires_at=_utc(expires_at))
            return bool(conn.execute(statement).rowcount)

    def delete(self, key: str) -> None:
        with self._begin("delete a session") as conn:
            conn.execute(sa.delete(self.table).where(self.table.c.key == key))

    def purge_expired(self, now: datetime) -> int:
        total = 0
        while True:
            # Short transactions, so SQLite's write lock is never held for long.
            with self._begin("purge expired sessions") as conn:
                removed = self._purge_batch(conn, _utc(now))
            total += removed
            if removed < self.purge_batch_size:
                return total

    def _purge_batch(self, conn: sa.Connection, now: datetime) -> int:
        c = self.table.c
        size = self.purge_batch_size
        dialect = conn.dialect.name
        if dialect == "postgresql":
            # Rows found by the expiry index are deleted by their physical
            # address, not found a second time through the primary key.
            table = conn.dialect.identifier_preparer.format_table(self.table)
            by_address = sa.text(
                f"DELETE FROM {table} WHERE ctid = ANY(ARRAY("
                f"SELECT ctid FROM {table} WHERE expires_at <= :now LIMIT :n))"
            )
            return int(conn.execute(by_address, {"now": now, "n": size}).rowcount)
        if dialect == "sqlite":
            rowid: sa.ColumnClause[int] = sa.literal_column("rowid")
            batch = sa.select(rowid).select_from(self.table).where(c.expires_at <= now).limit(size)
            by_rowid = sa.delete(self.table).where(rowid.in_(batch.scalar_subquery()))
            return int(conn.execute(by_rowid).rowcount)
        keys = conn.execute(sa.select(c.key).where(c.expires_at <= now).limit(size)).scalars()
        found = keys.all()
        if found:
            conn.execute(sa.delete(self.table).where(c.key.in_(found)))
        return len(found)

    def count(self, now: datetime) -> int:
        self._ensure_table()
        statement = sa.select(sa.func.count()).where(self.table.c.expires_at > _utc(now))
        with self._errors("count sessions"), self._statements.connect() as conn:
            return int(conn.execute(statement).scalar_one())

    def items(self, now: datetime) -> t.Iterator[tuple[str, Record]]:
        self._ensure_table()
        c = self.table.c
        after = ""
        while True:
            # Pages by key, each on a short connection: nothing stays open between yields.
            page = self._page(sa.and_(c.expires_at > _utc(now), c.key > after))
            for key, row in page:
                try:
                    record = self.load(key) if row is None else self._record(row)
                except CorruptRecordError as e:
                    logger.error("Skipping a corrupt session record: %s", e)
                    continue
                if record is not None:
                    yield key, record
            if len(page) < self.items_page_size:
                return
            after = page[-1][0]

    def clear(self) -> int:
        with self._begin("clear sessions") as conn:
            return int(conn.execute(sa.delete(self.table)).rowcount)

    def close(self) -> None:
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


def _sqlite_on_connect(*, wal: bool) -> t.Callable[[t.Any, t.Any], None]:
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
