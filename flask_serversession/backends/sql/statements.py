from __future__ import annotations

import hashlib
import json
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import sqlalchemy as sa
from sqlalchemy.sql.dml import ReturningDelete

from ..base import CorruptRecordError
from ..base import Delta
from ..base import Record

# Names of the bound parameters of the statements that Statements builds once.
KEY = "p_key"
NOW = "p_now"
EXPIRES = "p_expires"
DATA = "p_data"
CREATED = "p_created"
PATCH = "p_patch"
ADDED = "p_added"
DELETED = "p_deleted"
MAX_SIZE = "p_max_size"
USER = "p_user"

#: The column naming the user a session belongs to (``SERVERSESSION_USER_KEY``),
#: NULL for a session without one. Not ``user_id``: that is the name the docs
#: give an extra column filled by ``extras``, which the index may now replace.
OWNER = "owner"

# User ids the owner column keeps as they are; others are kept as a digest.
_DIGEST = "sha256:"
_LONGEST_PLAIN_OWNER = 200


def owner_text(user: str | None) -> str | None:
    """The owner column's text for ``user``: the id itself, or its digest.

    Every column type and index takes an id of up to 200 characters without
    NUL (PostgreSQL refuses NUL in text, its index entries end near 2,700
    bytes, other databases bound the column at 255). Any other id is kept as
    its SHA-256: the index only finds rows, and an id that starts like a
    digest is kept as a digest too, so the two spellings never meet.
    """
    if user is None or (
        len(user) <= _LONGEST_PLAIN_OWNER and "\x00" not in user and not user.startswith(_DIGEST)
    ):
        return user
    return _DIGEST + hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()


def utc(value: datetime) -> datetime:
    """Return ``value`` in UTC; SQLite drops the zone, so every value is stored in UTC."""
    if value.tzinfo is timezone.utc:
        return value
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


def extra_bind(column: str) -> str:
    """The bound parameter that fills the extra column ``column``."""
    return f"x_{column}"


#: What the statement of a delta save depends on, besides parameter values:
#: "merge", whether it sets keys, deletes keys, checks the size limit; the
#: extra columns. The statement's name in the backend's cache.
Shape = tuple[str, bool, bool, bool, tuple[str, ...]]


def shape_of(delta: Delta, extras: tuple[str, ...]) -> Shape:
    """The :data:`Shape` of a delta save."""
    limited = delta.max_size is not None and bool(delta.set)
    return ("merge", bool(delta.set), bool(delta.deleted), limited, extras)


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
    :param user_index: rows are read with their owner column (the user index).
    """

    def __init__(self, table: sa.Table, dialect: sa.Dialect, *, user_index: bool = False) -> None:
        self.table = table
        self.delete_returning = bool(dialect.delete_returning)
        self.user_index = user_index

    def timestamp(self, column: sa.Column[t.Any]) -> sa.ColumnElement[t.Any]:
        """Return ``column`` as it is read; see :meth:`parse_timestamp`."""
        return column

    def parse_timestamp(self, value: t.Any) -> datetime | None:
        """Return a read timestamp as a datetime, or None if it is not one."""
        return value if isinstance(value, datetime) else None

    def select(self) -> sa.Select[t.Any]:
        """Return the query of whole rows, with columns named as the table's."""
        c = self.table.c
        query = sa.select(
            c.key,
            c.data,
            self.timestamp(c.created_at).label("created_at"),
            self.timestamp(c.expires_at).label("expires_at"),
        )
        return query.add_columns(c[OWNER]) if self.user_index else query

    def record(self, row: t.Sequence[t.Any]) -> Record:
        """Return the record of a row as the dialect's select reads it.

        :raises CorruptRecordError: a column holds something no save writes.
        """
        key, text, created, expires = row[0], row[1], row[2], row[3]
        user = row[4] if self.user_index else None
        if user is not None and not isinstance(user, str):
            raise CorruptRecordError(
                f"Session row {key} has an owner of type {type(user).__name__}, not text."
            )
        if user is not None and user.startswith(_DIGEST):
            user = None  # the data names the user; a digest cannot

        created_at = self.parse_timestamp(created)
        expires_at = self.parse_timestamp(expires)
        if created_at is None or expires_at is None:
            raise CorruptRecordError(f"Session row {key} has invalid timestamps.")
        if not isinstance(text, str):
            raise CorruptRecordError(
                f"Session row {key} has data of type {type(text).__name__}, not text."
            )
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise CorruptRecordError(f"Session row {key} has data that is not JSON: {e}") from e
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise CorruptRecordError(
                f"Session row {key} has data that is not a JSON object of strings."
            )
        return Record(data, utc(created_at), utc(expires_at), user=user)

    # The statements below take bound parameters (KEY, NOW, ...), so that the
    # backend builds and compiles each one once and runs it with new values.

    def by_key(self) -> sa.ColumnElement[bool]:
        return self.table.c.key == sa.bindparam(KEY, type_=self.table.c.key.type)

    def live(self) -> sa.ColumnElement[bool]:
        """The row of KEY, unless it expired by NOW."""
        expires_at = self.table.c.expires_at
        return sa.and_(self.by_key(), expires_at > sa.bindparam(NOW, type_=expires_at.type))

    def extra_values(self, extras: t.Sequence[str]) -> dict[str, t.Any]:
        """The extra columns ``extras``, each set from its :func:`extra_bind` parameter."""
        c = self.table.c
        return {name: sa.bindparam(extra_bind(name), type_=c[name].type) for name in extras}

    def read_query(self) -> sa.Select[t.Any]:
        """Read the row of KEY as :meth:`select` does."""
        return self.select().where(self.by_key())

    def of_user(self) -> sa.ColumnElement[bool]:
        """The rows of the user USER that have not expired by NOW."""
        c = self.table.c
        owner, expires_at = c[OWNER], c.expires_at
        return sa.and_(
            owner == sa.bindparam(USER, type_=owner.type),
            expires_at > sa.bindparam(NOW, type_=expires_at.type),
        )

    def user_query(self) -> sa.Select[t.Any]:
        """Read the live rows of USER as :meth:`select` does, through the owner index."""
        return self.select().where(self.of_user())

    def user_keys_query(self) -> sa.Select[t.Any]:
        """The keys of the live rows of USER."""
        return sa.select(self.table.c.key).where(self.of_user())

    def set_if_live(self, extras: t.Sequence[str]) -> sa.Update:
        """Set the expiry to EXPIRES, and the extra columns, of the live row."""
        expires = sa.bindparam(EXPIRES, type_=self.table.c.expires_at.type)
        values = {"expires_at": expires, **self.extra_values(extras)}
        return sa.update(self.table).where(self.live()).values(values)

    def delete_statement(self) -> sa.Delete:
        """Delete the row of KEY."""
        return sa.delete(self.table).where(self.by_key())

    def take_statement(self) -> ReturningDelete[t.Any] | None:
        """Delete the row of KEY and return it as :meth:`select` reads it; None if unsupported."""
        if not self.delete_returning:
            return None
        return self.delete_statement().returning(*self.select().selected_columns)

    def row_values(self, extras: t.Sequence[str]) -> dict[str, t.Any]:
        """A whole row from KEY, DATA, CREATED, EXPIRES and the extras."""
        c = self.table.c
        return {
            "key": sa.bindparam(KEY, type_=c.key.type),
            "data": sa.bindparam(DATA, type_=c.data.type),
            "created_at": sa.bindparam(CREATED, type_=c.created_at.type),
            "expires_at": sa.bindparam(EXPIRES, type_=c.expires_at.type),
            **self.extra_values(extras),
        }

    def upsert_statement(self, extras: t.Sequence[str]) -> sa.Insert | None:
        """Insert a row, or replace the row of that key; None where it takes two statements."""
        return None

    def add_statement(self, extras: t.Sequence[str]) -> sa.Insert | None:
        """Insert a row, or replace one expired by NOW; None where it takes more statements."""
        return None

    def merge_values(self, delta: Delta) -> dict[str, t.Any]:
        """The parameters of :meth:`merge` that carry ``delta``'s keys and size limit."""
        return {}

    def merge(self, shape: Shape) -> sa.Update | None:
        """Return one UPDATE that applies a delta to the live row and checks its size.

        ``shape`` is :func:`shape_of` the delta; its keys and limit come in the
        parameters of :meth:`merge_values`, its expiry in EXPIRES. It matches no row where
        :meth:`record` would fail or the merged data would pass MAX_SIZE
        (:func:`~.base.check_size`); it may also miss a row whose size SQL
        cannot measure as Python does. None where the database cannot do this
        in one statement.
        """
        return None

    def read_locked(self, conn: sa.Connection, key: str) -> sa.Row[t.Any] | None:
        """Read the row of ``key`` and lock it until the transaction ends.

        :raises CorruptRecordError: the driver cannot convert a value of the row.
        """
        try:
            return conn.execute(self.read_query().with_for_update(), {KEY: key}).first()
        except (TypeError, ValueError) as e:
            raise CorruptRecordError(f"Session row {key} cannot be read: {e}") from e

    def take(self, conn: sa.Connection, key: str) -> sa.Row[t.Any] | None:
        """Delete the row of ``key`` and return it as :meth:`select` reads it."""
        statement = self.take_statement()
        if statement is not None:
            return conn.execute(statement, {KEY: key}).first()
        row = self.read_locked(conn, key)
        if row is not None:
            conn.execute(self.delete_statement(), {KEY: key})
        return row

    def upsert(
        self, conn: sa.Connection, values: dict[str, t.Any], extras: t.Sequence[str]
    ) -> None:
        """Insert or replace a whole row; ``values`` as :meth:`row_values` binds them."""
        statement = self.upsert_statement(extras)
        if statement is not None:
            conn.execute(statement, values)
            return
        row = self.row_values(extras)
        changes = {name: value for name, value in row.items() if name != "key"}
        update = sa.update(self.table).where(self.by_key()).values(changes)
        if not conn.execute(update, values).rowcount:
            conn.execute(sa.insert(self.table).values(row), values)

    def page(
        self, conn: sa.Connection, live: sa.ColumnElement[bool], size: int
    ) -> list[tuple[str, sa.Row[t.Any] | None]]:
        """Return ``(key, row)`` of the first ``size`` rows matching ``live`` by key.

        The row is None where the driver cannot read the rows.
        """
        c = self.table.c
        try:
            query = self.select().where(live).order_by(c.key)
            rows = conn.execute(query.limit(size)).all()
            return [(row.key, row) for row in rows]
        except (TypeError, ValueError):
            keys = sa.select(c.key).where(live).order_by(c.key)
            found = conn.execute(keys.limit(size)).scalars().all()
            return [(key, None) for key in found]

    def stale(self, now: datetime, longest_lifetime: timedelta | None) -> sa.ColumnElement[bool]:
        """The rows a purge removes: expired by ``now``, or expiring past ``longest_lifetime``."""
        expires_at = self.table.c.expires_at
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
        return stale

    def purge_batch(self, conn: sa.Connection, stale: sa.ColumnElement[bool], size: int) -> int:
        """Delete at most ``size`` rows matching ``stale``; return how many."""
        c = self.table.c
        found = conn.execute(sa.select(c.key).where(stale).limit(size)).scalars().all()
        if found:
            conn.execute(sa.delete(self.table).where(c.key.in_(found)))
        return len(found)
