from __future__ import annotations

import json
import threading
import typing as t
import weakref
from contextlib import nullcontext
from datetime import datetime
from datetime import timezone

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite

from .base import CorruptRecordError
from .base import Delta
from .base import Record

_T = t.TypeVar("_T")

# Timestamps that every driver turns into a datetime, whatever the session's time zone.
_EARLIEST = datetime(1, 1, 2, tzinfo=timezone.utc)
_LATEST = datetime(9999, 12, 30, tzinfo=timezone.utc)
_SQLITE_BUSY_TIMEOUT_MS = 30_000
# Finds the members of a JSON object that are not strings.
_NOT_A_STRING = sa.cast(sa.literal('$.* ? (@.type() != "string")'), postgresql.JSONPATH)

# One lock per pool that hands a single connection to every thread.
_SHARED_CONNECTION_LOCKS: weakref.WeakKeyDictionary[sa.Pool, threading.RLock] = (
    weakref.WeakKeyDictionary()
)
_SHARED_CONNECTION_LOCKS_GUARD = threading.Lock()


def utc(value: datetime) -> datetime:
    """Return ``value`` in UTC; SQLite drops the zone, so every value is stored in UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def plain(text: str) -> bool:
    """Whether the JSON functions of SQL read ``text`` as Python does: no NUL, valid UTF-8."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def serializer_for(engine: sa.Engine) -> t.ContextManager[t.Any]:
    """Return a lock held around each operation where all threads share one connection.

    A ``StaticPool`` (an in-memory SQLite database) gives every thread the same
    DBAPI connection, which cannot run two statements or transactions at once.
    """
    if not isinstance(engine.pool, sa.StaticPool):
        return nullcontext()
    with _SHARED_CONNECTION_LOCKS_GUARD:
        return _SHARED_CONNECTION_LOCKS.setdefault(engine.pool, threading.RLock())


def twice(operation: t.Callable[[], _T]) -> _T:
    """Run ``operation``; run it again if its pooled connection turned out to be dead."""
    try:
        return operation()
    except exc.DBAPIError as e:
        # A server restart or an idle timeout closed the connection while it
        # sat in the pool. SQLAlchemy invalidated it and every pooled
        # connection as old, so a second attempt connects afresh. Every
        # operation of this backend may run twice: reads change nothing;
        # create, delete, touch and purge set the same end state again; a
        # delta sets keys to values and the expiry to a time, so applying it
        # twice equals once; a take repeated after its delete committed finds
        # nothing and returns None, which signs the user out but brings no
        # session back.
        if not e.connection_invalidated:
            raise
    return operation()


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


def merged(data: t.Mapping[str, str], delta: Delta) -> dict[str, str]:
    """Return ``data`` with ``delta`` applied."""
    result = {k: v for k, v in data.items() if k not in delta.deleted}
    result.update(delta.set)
    return result


class Statements:
    """The statements of :class:`SQLAlchemyBackend` that differ between databases.

    This base works on any database: a delta is merged in Python while the
    row is locked. The subclasses for SQLite and PostgreSQL merge deltas and
    take rows in single statements.

    :param table: the session table.
    :param dialect: the dialect of the engine.
    """

    def __init__(self, table: sa.Table, dialect: sa.Dialect) -> None:
        self.table = table
        self.delete_returning = bool(dialect.delete_returning)

    def timestamp(self, column: sa.Column[t.Any]) -> sa.ColumnElement[t.Any]:
        """Return ``column`` as it is read; see :meth:`parse_timestamp`."""
        return column

    def parse_timestamp(self, value: t.Any) -> datetime | None:
        """Return a read timestamp as a datetime, or None if it is not one."""
        return value if isinstance(value, datetime) else None

    def select(self) -> sa.Select[t.Any]:
        """Return the query of whole rows, with columns named as the table's."""
        c = self.table.c
        return sa.select(
            c.key,
            c.data,
            self.timestamp(c.created_at).label("created_at"),
            self.timestamp(c.expires_at).label("expires_at"),
        )

    def record(self, row: sa.Row[t.Any]) -> Record:
        """Return the record of a row as the dialect's select reads it.

        :raises CorruptRecordError: a column holds something no save writes.
        """
        created_at = self.parse_timestamp(row.created_at)
        expires_at = self.parse_timestamp(row.expires_at)
        if created_at is None or expires_at is None:
            raise CorruptRecordError(f"Session row {row.key} has invalid timestamps.")
        if not isinstance(row.data, str):
            raise CorruptRecordError(
                f"Session row {row.key} has data of type {type(row.data).__name__}, not text."
            )
        try:
            data = json.loads(row.data)
        except (ValueError, RecursionError) as e:
            raise CorruptRecordError(f"Session row {row.key} has data that is not JSON: {e}") from e
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise CorruptRecordError(
                f"Session row {row.key} has data that is not a JSON object of strings."
            )
        return Record(data, utc(created_at), utc(expires_at))

    def upsert(self, conn: sa.Connection, row: dict[str, t.Any]) -> None:
        c = self.table.c
        updated = conn.execute(sa.update(self.table).where(c.key == row["key"]).values(row))
        if not updated.rowcount:
            conn.execute(sa.insert(self.table).values(row))

    def merge_update(
        self, live: sa.ColumnElement[bool], delta: Delta, changes: dict[str, t.Any]
    ) -> sa.Update | None:
        """Return one UPDATE that applies ``delta`` to the live row and checks its size.

        It matches no row where :meth:`record` would fail or the merged data
        would pass ``delta.max_size`` (:func:`~.base.check_size`); it may also
        miss a row whose size SQL cannot measure as Python does. None where
        the database cannot do this in one statement.
        """
        return None

    def read(self, conn: sa.Connection, key: str, *, lock: bool = False) -> sa.Row[t.Any] | None:
        """Read the row of ``key``; with ``lock``, lock it until the transaction ends.

        :raises CorruptRecordError: the driver cannot convert a value of the row.
        """
        query = self.select().where(self.table.c.key == key)
        try:
            return conn.execute(query.with_for_update() if lock else query).first()
        except (TypeError, ValueError) as e:
            raise CorruptRecordError(f"Session row {key} cannot be read: {e}") from e

    def take(self, conn: sa.Connection, key: str) -> sa.Row[t.Any] | None:
        """Delete the row of ``key`` and return it as :meth:`select` reads it."""
        c = self.table.c
        if self.delete_returning:
            statement = sa.delete(self.table).where(c.key == key)
            returning = statement.returning(*self.select().selected_columns)
            return conn.execute(returning).first()
        row = self.read(conn, key, lock=True)
        if row is not None:
            conn.execute(sa.delete(self.table).where(c.key == key))
        return row

    def purge_batch(self, conn: sa.Connection, stale: sa.ColumnElement[bool], size: int) -> int:
        """Delete at most ``size`` rows matching ``stale``; return how many."""
        c = self.table.c
        found = conn.execute(sa.select(c.key).where(stale).limit(size)).scalars().all()
        if found:
            conn.execute(sa.delete(self.table).where(c.key.in_(found)))
        return len(found)


class SQLiteStatements(Statements):
    """SQLite: ``json_patch`` merges, ``DELETE ... RETURNING`` takes (3.35 and later)."""

    def timestamp(self, column: sa.Column[t.Any]) -> sa.ColumnElement[t.Any]:
        # Read as stored, so that a value of any type or form is parsed here.
        return sa.type_coerce(column, sa.String)

    def parse_timestamp(self, value: t.Any) -> datetime | None:
        if not isinstance(value, str):
            return None
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None

    def upsert(self, conn: sa.Connection, row: dict[str, t.Any]) -> None:
        insert = sqlite.insert(self.table).values(row)
        changes = {k: insert.excluded[k] for k in row if k != "key"}
        conn.execute(insert.on_conflict_do_update(index_elements=["key"], set_=changes))

    def merge_update(
        self, live: sa.ColumnElement[bool], delta: Delta, changes: dict[str, t.Any]
    ) -> sa.Update | None:
        c = self.table.c
        # Values are strings, so a merge patch's null deletes and nothing nests.
        patch: dict[str, str | None] = dict.fromkeys(delta.deleted)
        patch.update(delta.set)
        new = sa.func.json_patch(c.data, sa.literal(json.dumps(patch), sa.Text), type_=sa.Text)
        fits: t.Any = sa.true()
        if delta.max_size is not None and delta.set:
            fits = sa.case(
                # json_each cuts strings at a NUL: such rows are measured in Python.
                (sa.func.instr(c.data, "\\u0000") > 0, sa.false()),
                else_=self._size(new) <= sa.func.max(delta.max_size, self._size(c.data)),
            )
        members = sa.func.json_each(c.data).table_valued("type")
        not_text = sa.select(members.c.type).where(members.c.type != "text").exists()
        times = sa.and_(self._is_time(c.created_at), self._is_time(c.expires_at))
        # A row that does not read as a record is left alone. JSON functions
        # fail on malformed text, and CASE keeps the tests in this order.
        readable = sa.case(
            (sa.func.typeof(c.data) != "text", sa.false()),
            (sa.func.json_valid(c.data) == 0, sa.false()),
            (sa.func.json_type(c.data) != "object", sa.false()),
            (not_text, sa.false()),
            (~times, sa.false()),
            else_=fits,
        )
        return sa.update(self.table).where(live, readable).values(data=new, **changes)

    @staticmethod
    def _is_time(column: sa.Column[t.Any]) -> sa.ColumnElement[bool]:
        return sa.and_(sa.func.typeof(column) == "text", sa.func.datetime(column).is_not(None))

    @staticmethod
    def _size(document: sa.ColumnElement[t.Any]) -> sa.ScalarSelect[t.Any]:
        members = sa.func.json_each(document).table_valued("key", "value")

        def octets(text: sa.ColumnElement[t.Any]) -> sa.ColumnElement[int]:
            return sa.func.length(sa.cast(text, sa.LargeBinary))

        total = sa.func.sum(octets(members.c.key) + octets(members.c.value))
        return sa.select(sa.func.coalesce(total, 0)).select_from(members).scalar_subquery()

    def read(self, conn: sa.Connection, key: str, *, lock: bool = False) -> sa.Row[t.Any] | None:
        if lock:
            # No FOR UPDATE: a first write takes SQLite's database write lock instead.
            c = self.table.c
            touch = sa.update(self.table).where(c.key == key).values(expires_at=c.expires_at)
            conn.execute(touch)
        return super().read(conn, key, lock=lock)

    def purge_batch(self, conn: sa.Connection, stale: sa.ColumnElement[bool], size: int) -> int:
        rowid: sa.ColumnClause[int] = sa.literal_column("rowid")
        batch = sa.select(rowid).select_from(self.table).where(stale).limit(size)
        by_rowid = sa.delete(self.table).where(rowid.in_(batch.scalar_subquery()))
        return int(conn.execute(by_rowid).rowcount)


class PostgreSQLStatements(Statements):
    """PostgreSQL: ``jsonb`` merges, ``DELETE ... RETURNING`` takes, purge by ``ctid``."""

    def timestamp(self, column: sa.Column[t.Any]) -> sa.ColumnElement[t.Any]:
        # psycopg cannot load 'infinity' or years past 9999: those read as NULL.
        return sa.case((column.between(_EARLIEST, _LATEST), column))

    def upsert(self, conn: sa.Connection, row: dict[str, t.Any]) -> None:
        insert = postgresql.insert(self.table).values(row)
        changes = {k: insert.excluded[k] for k in row if k != "key"}
        conn.execute(insert.on_conflict_do_update(index_elements=["key"], set_=changes))

    def merge_update(
        self, live: sa.ColumnElement[bool], delta: Delta, changes: dict[str, t.Any]
    ) -> sa.Update | None:
        c = self.table.c
        # Stored text that jsonb cannot hold (not JSON, a NUL) raises DataError.
        stored: t.Any = sa.cast(c.data, postgresql.JSONB)
        new = stored
        if delta.deleted:
            deleted = sa.cast(sorted(delta.deleted), postgresql.ARRAY(sa.Text))
            new = new.op("-", return_type=postgresql.JSONB)(deleted)
        if delta.set:
            added = sa.cast(sa.literal(json.dumps(delta.set), sa.Text), postgresql.JSONB)
            new = new.op("||", return_type=postgresql.JSONB)(added)
        fits: t.Any = sa.true()
        if delta.max_size is not None and delta.set:
            fits = self._size(new) <= sa.func.greatest(delta.max_size, self._size(stored))
        # A row that does not read as a record is left alone; CASE keeps the
        # object test first, as the others fail on anything else.
        readable = sa.case(
            (sa.func.jsonb_typeof(stored) != "object", sa.false()),
            (sa.func.jsonb_path_exists(stored, _NOT_A_STRING), sa.false()),
            (~c.created_at.between(_EARLIEST, _LATEST), sa.false()),
            (c.expires_at > _LATEST, sa.false()),
            else_=fits,
        )
        return (
            sa.update(self.table)
            .where(live, readable)
            .values(data=sa.cast(new, sa.Text), **changes)
        )

    @staticmethod
    def _size(document: sa.ColumnElement[t.Any]) -> sa.ScalarSelect[t.Any]:
        members = sa.func.jsonb_each_text(document).table_valued("key", "value")
        octets = sa.func.octet_length
        total = sa.func.sum(octets(members.c.key) + octets(members.c.value))
        return sa.select(sa.func.coalesce(total, 0)).select_from(members).scalar_subquery()

    def purge_batch(self, conn: sa.Connection, stale: sa.ColumnElement[bool], size: int) -> int:
        # Rows found by the expiry index are deleted by their physical
        # address, not found a second time through the primary key.
        ctid: sa.ColumnClause[t.Any] = sa.literal_column("ctid")
        batch = sa.select(ctid).select_from(self.table).where(stale).limit(size)
        by_address = sa.delete(self.table).where(
            ctid == sa.any_(sa.func.array(batch.scalar_subquery()))
        )
        return int(conn.execute(by_address).rowcount)


def statements_for(table: sa.Table, dialect: sa.Dialect) -> Statements:
    """Return the statements for ``dialect``."""
    kinds: dict[str, type[Statements]] = {
        "sqlite": SQLiteStatements,
        "postgresql": PostgreSQLStatements,
    }
    return kinds.get(dialect.name, Statements)(table, dialect)
