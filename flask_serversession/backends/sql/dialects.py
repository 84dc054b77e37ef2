"""The SQL backend's statements for SQLite and PostgreSQL: a merge or a take in one statement."""

from __future__ import annotations

import json
import typing as t
from datetime import datetime
from datetime import timezone

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite

from ..base import Delta
from .statements import ADDED
from .statements import DELETED
from .statements import KEY
from .statements import MAX_SIZE
from .statements import NOW
from .statements import OWNER
from .statements import PATCH
from .statements import Shape
from .statements import Statements

# Timestamps that every driver turns into a datetime, whatever the session's time zone.
_EARLIEST = datetime(1, 1, 2, tzinfo=timezone.utc)
_LATEST = datetime(9999, 12, 30, tzinfo=timezone.utc)
# Finds the members of a JSON object that are not strings.
_NOT_A_STRING = sa.cast(sa.literal('$.* ? (@.type() != "string")'), postgresql.JSONPATH)


def _replacing(
    insert: sqlite.Insert | postgresql.Insert, extras: t.Sequence[str], *, expired: bool = False
) -> sa.Insert:
    """``insert``, replacing all columns but the key of a row that has its key.

    With ``expired``, only a row that expired by NOW is replaced; a live one
    is left as it is, and the statement's row count is 0.
    """
    changes = {k: insert.excluded[k] for k in ["data", "created_at", "expires_at", *extras]}
    if not expired:
        return insert.on_conflict_do_update(index_elements=["key"], set_=changes)
    expires_at = insert.table.c.expires_at
    where = expires_at <= sa.bindparam(NOW, type_=expires_at.type)
    return insert.on_conflict_do_update(index_elements=["key"], set_=changes, where=where)


class SQLiteStatements(Statements):
    """SQLite: ``json_patch`` merges, ``DELETE ... RETURNING`` takes (3.35 and later)."""

    def timestamp(self, column: sa.Column[t.Any]) -> sa.ColumnElement[t.Any]:
        # Read as stored, so that a value of any type or form is parsed here.
        return sa.type_coerce(column, sa.String)

    def parse_timestamp(self, value: t.Any) -> datetime | None:
        if not isinstance(value, str):
            return None
        try:
            # Stored in UTC without an offset, as SQLAlchemy writes it.
            return datetime.fromisoformat(value + "+00:00")
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None

    def upsert_statement(self, extras: t.Sequence[str]) -> sa.Insert | None:
        return _replacing(sqlite.insert(self.table).values(self.row_values(extras)), extras)

    def add_statement(self, extras: t.Sequence[str]) -> sa.Insert | None:
        insert = sqlite.insert(self.table).values(self.row_values(extras))
        return _replacing(insert, extras, expired=True)

    def merge_values(self, delta: Delta) -> dict[str, t.Any]:
        # Values are strings, so a merge patch's null deletes and nothing nests.
        patch: t.Mapping[str, str | None] = delta.set
        if delta.deleted:
            patch = {**dict.fromkeys(delta.deleted), **delta.set}
        values: dict[str, t.Any] = {PATCH: json.dumps(patch)}
        if delta.max_size is not None and delta.set:
            values[MAX_SIZE] = delta.max_size
        return values

    def merge(self, shape: Shape) -> sa.Update | None:
        _, _set, _deleted, limited, extras = shape  # one patch sets and deletes
        c = self.table.c
        patch = sa.bindparam(PATCH, type_=sa.Text)
        new = sa.func.json_patch(c.data, patch, type_=sa.Text)
        fits: t.Any = sa.true()
        if limited:
            limit = sa.bindparam(MAX_SIZE, type_=sa.Integer)
            fits = sa.case(
                # json_each cuts strings at a NUL: such rows are measured in Python.
                (sa.func.instr(c.data, "\\u0000") > 0, sa.false()),
                else_=self._size(new) <= sa.func.max(limit, self._size(c.data)),
            )
        members = sa.func.json_each(c.data).table_valued("type")
        not_text = sa.select(members.c.type).where(members.c.type != "text").exists()
        typed = sa.and_(self._is_time(c.created_at), self._is_time(c.expires_at))
        if self.user_index:
            # As record() reads it: an owner that is not text (a blob) is damage.
            kinds = [sa.literal("text"), sa.literal("null")]
            typed = sa.and_(typed, sa.func.typeof(c[OWNER]).in_(kinds))
        # A row that does not read as a record is left alone. JSON functions
        # fail on malformed text, and CASE keeps the tests in this order.
        readable = sa.case(
            (sa.func.typeof(c.data) != "text", sa.false()),
            (sa.func.json_valid(c.data) == 0, sa.false()),
            (sa.func.json_type(c.data) != "object", sa.false()),
            (not_text, sa.false()),
            (~typed, sa.false()),
            else_=fits,
        )
        update = self.set_if_live(extras).where(readable)
        return update.values(data=new)

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

    def read_locked(self, conn: sa.Connection, key: str) -> sa.Row[t.Any] | None:
        # No FOR UPDATE: a first write takes SQLite's database write lock instead.
        c = self.table.c
        touch = sa.update(self.table).where(self.by_key()).values(expires_at=c.expires_at)
        conn.execute(touch, {KEY: key})
        return super().read_locked(conn, key)

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

    def upsert_statement(self, extras: t.Sequence[str]) -> sa.Insert | None:
        return _replacing(postgresql.insert(self.table).values(self.row_values(extras)), extras)

    def add_statement(self, extras: t.Sequence[str]) -> sa.Insert | None:
        insert = postgresql.insert(self.table).values(self.row_values(extras))
        return _replacing(insert, extras, expired=True)

    def merge_values(self, delta: Delta) -> dict[str, t.Any]:
        values: dict[str, t.Any] = {}
        if delta.set:
            values[ADDED] = json.dumps(delta.set)
            if delta.max_size is not None:
                values[MAX_SIZE] = delta.max_size
        if delta.deleted:
            values[DELETED] = sorted(delta.deleted)
        return values

    def merge(self, shape: Shape) -> sa.Update | None:
        _, has_set, has_deleted, limited, extras = shape
        c = self.table.c
        # Stored text that jsonb cannot hold (not JSON, a NUL) raises DataError.
        stored: t.Any = sa.cast(c.data, postgresql.JSONB)
        new = stored
        if has_deleted:
            deleted = sa.bindparam(DELETED, type_=postgresql.ARRAY(sa.Text))
            new = new.op("-", return_type=postgresql.JSONB)(deleted)
        if has_set:
            added = sa.cast(sa.bindparam(ADDED, type_=sa.Text), postgresql.JSONB)
            new = new.op("||", return_type=postgresql.JSONB)(added)
        fits: t.Any = sa.true()
        if limited:
            limit = sa.bindparam(MAX_SIZE, type_=sa.Integer)
            fits = self._size(new) <= sa.func.greatest(limit, self._size(stored))
        # A row that does not read as a record is left alone; CASE keeps the
        # object test first, as the others fail on anything else.
        readable = sa.case(
            (sa.func.jsonb_typeof(stored) != "object", sa.false()),
            (sa.func.jsonb_path_exists(stored, _NOT_A_STRING), sa.false()),
            (~c.created_at.between(_EARLIEST, _LATEST), sa.false()),
            (c.expires_at > _LATEST, sa.false()),
            else_=fits,
        )
        update = self.set_if_live(extras).where(readable)
        return update.values(data=sa.cast(new, sa.Text))

    @staticmethod
    def _size(document: sa.ColumnElement[t.Any]) -> sa.ScalarSelect[t.Any]:
        members = sa.func.jsonb_each_text(document).table_valued("key", "value")
        octets = sa.func.octet_length
        total = sa.func.sum(octets(members.c.key) + octets(members.c.value))
        return sa.select(sa.func.coalesce(total, 0)).select_from(members).scalar_subquery()

    def purge_batch(self, conn: sa.Connection, stale: sa.ColumnElement[bool], size: int) -> int:
        # Rows found by the expiry index are deleted by their physical
        # address, not found a second time through the primary key. Rows
        # another transaction holds are skipped, not waited for: a purge
        # never queues behind a request (nor another purge), and a later
        # purge removes them.
        ctid: sa.ColumnClause[t.Any] = sa.literal_column("ctid")
        batch = sa.select(ctid).select_from(self.table).where(stale).limit(size)
        batch = batch.with_for_update(skip_locked=True)
        by_address = sa.delete(self.table).where(
            ctid == sa.any_(sa.func.array(batch.scalar_subquery()))
        )
        return int(conn.execute(by_address).rowcount)


def statements_for(table: sa.Table, dialect: sa.Dialect, *, user_index: bool) -> Statements:
    """Return the statements for ``dialect``; with ``user_index``, rows carry their owner."""
    kinds: dict[str, type[Statements]] = {
        "sqlite": SQLiteStatements,
        "postgresql": PostgreSQLStatements,
    }
    return kinds.get(dialect.name, Statements)(table, dialect, user_index=user_index)
