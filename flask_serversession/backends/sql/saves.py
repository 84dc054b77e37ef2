"""What the SQL backend runs to change a stored row: a delta merged into the live row (in
one statement where the dialect has one, under a row lock otherwise), a renewal, a take,
a whole row written over any other or only where no live one is."""

from __future__ import annotations

import json
import typing as t
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import exc

from ..base import check_size
from ..base import CorruptRecordError
from ..base import data_size
from ..base import Delta
from ..base import expected
from ..base import Record
from .statements import EXPIRES
from .statements import extra_bind
from .statements import KEY
from .statements import merged
from .statements import NOW
from .statements import OWNER
from .statements import owner_text
from .statements import plain
from .statements import shape_of

if t.TYPE_CHECKING:
    from .runner import Runner
    from .statements import Statements

_SET_IF_LIVE: tuple[str, tuple[str, ...]] = ("set_if_live", ())

#: Fills the extra columns from the decoded session: values by column name.
Fill = t.Callable[[t.Mapping[str, t.Any]], t.Mapping[str, t.Any]]


def extra_parameters(
    fill: Fill | None,
    columns: frozenset[str],
    table: str,
    values: t.Mapping[str, t.Any] | None,
    *,
    owner: bool,
    user: str | None,
) -> tuple[tuple[str, ...], dict[str, t.Any]]:
    """The extra columns a save sets, and their parameters; with ``owner``, the user's too.

    The owner column is set as an extra column is, by the statement of the
    save itself: a change of user costs no statement of its own.

    :param fill: the backend's ``extras`` callback.
    :param columns: the names of the extra columns of ``table``.
    :param values: the decoded session; None where the save does not fill extras.
    :raises ValueError: ``fill`` returned a name that is not an extra column.
    """
    extra = {} if fill is None or values is None else dict(fill(values))
    unknown = extra.keys() - columns
    if unknown:
        raise ValueError(
            f"The extras callback returned {sorted(unknown)}, which are not extra columns"
            f" of table {table!r} ({sorted(columns)})."
        )
    names = tuple(sorted(extra))
    parameters = {extra_bind(name): extra[name] for name in names}
    if owner:
        names += (OWNER,)
        parameters[extra_bind(OWNER)] = owner_text(user)
    return names, parameters


def merge(
    runner: Runner, sql: Statements, delta: Delta, values: dict[str, t.Any], extras: tuple[str, ...]
) -> bool:
    """Apply ``delta`` to the live row; ``values`` binds KEY, NOW, EXPIRES and ``extras``.

    :return: False if no live row had the key.
    """
    name = shape = shape_of(delta, extras)
    build = lambda: sql.merge(shape)  # noqa: E731
    texts = "".join([*delta.set, *delta.set.values(), *delta.deleted])
    expecting = sql.expect_values(delta)
    if delta.expect is not None:
        texts += delta.expect[1] or ""
    # A compare-and-set the statement cannot test is tested under the row lock.
    one_statement = delta.expect is None or expecting is not None
    if one_statement and runner.exists(name, build) and plain(texts):
        try:
            values.update(sql.merge_values(delta))
            values.update(expecting or {})
            if runner.execute(name, build, values, False):
                return True
        except exc.DataError:
            # jsonb refuses the stored text (not JSON, or a NUL that an
            # older version wrote); Python reads it under the row lock.
            pass
        else:
            # No row matched: only now find out why, with one more read.
            data = _live_data(sql, _read(runner, sql, values[KEY]), values[NOW])
            if data is None or not expected(data, delta):
                return False
            check_size(data_size(data), data_size(merged(data, delta)), delta.max_size)
            # It fits now: the row changed since the UPDATE.
    return merge_locked(runner.engine, sql, delta, values, extras)


def merge_locked(
    engine: sa.Engine,
    sql: Statements,
    delta: Delta,
    values: dict[str, t.Any],
    extras: tuple[str, ...],
    as_read: Record | None = None,
) -> bool:
    """:func:`merge` in Python, under a row lock; with ``as_read``, only while the
    row still holds its data and expiry (``Backend.rewrite``)."""
    key = values[KEY]
    with engine.begin() as conn:
        row = sql.read_locked(conn, key)
        data = _live_data(sql, row, values[NOW])
        if data is None or not expected(data, delta):
            return False
        if as_read is not None:
            held = sql.record(row) if row is not None else None
            if held is None or (held.data, held.expires_at) != (as_read.data, as_read.expires_at):
                return False
        new = merged(data, delta)
        if delta.max_size is not None:
            check_size(data_size(data), data_size(new), delta.max_size)
        changes = {"data": json.dumps(new), "expires_at": values[EXPIRES]}
        changes.update({name: values[extra_bind(name)] for name in extras})
        statement = sa.update(sql.table).where(sql.table.c.key == key)
        conn.execute(statement.values(changes))
        return True


def _read(runner: Runner, sql: Statements, key: str) -> t.Sequence[t.Any] | None:
    """The row of ``key`` as the dialect's select reads it.

    :raises CorruptRecordError: the driver cannot convert a value of the row.
    """
    try:
        rows = runner.execute("read", sql.read_query, {KEY: key}, True)
    except (TypeError, ValueError) as e:
        raise CorruptRecordError(f"Session row {key} cannot be read: {e}") from e
    return rows[0] if rows else None


def _live_data(
    sql: Statements, row: t.Sequence[t.Any] | None, now: datetime
) -> dict[str, str] | None:
    """The data of ``row``; None unless it is live and readable."""
    try:
        record = None if row is None else sql.record(row)
    except CorruptRecordError:
        return None
    return record.data if record is not None and record.expires_at > now else None


def set_if_live(
    runner: Runner, sql: Statements, values: dict[str, t.Any], extras: tuple[str, ...]
) -> bool:
    """Set the expiry and the extra columns ``extras`` of the live row; False if none."""
    name = ("set_if_live", extras)
    return bool(runner.execute(name, lambda: sql.set_if_live(extras), values, False))


def touch(runner: Runner, sql: Statements, values: dict[str, t.Any]) -> bool:
    """Set the expiry of the live row of KEY to EXPIRES; False if none."""
    return bool(runner.execute(_SET_IF_LIVE, lambda: sql.set_if_live(()), values, False))


def take(runner: Runner, sql: Statements, key: str) -> t.Sequence[t.Any] | None:
    """Delete the row of ``key`` and return it as the dialect's select reads it."""
    if runner.exists("take", sql.take_statement):
        rows = runner.execute("take", sql.take_statement, {KEY: key}, True)
        return rows[0] if rows else None
    with runner.write_connection() as conn:
        return sql.take(conn, key)


def create(
    runner: Runner, sql: Statements, values: dict[str, t.Any], extras: tuple[str, ...]
) -> None:
    """Insert the row of KEY or replace it; ``values`` as :meth:`Statements.row_values` binds."""
    name = ("upsert", extras)
    build = lambda: sql.upsert_statement(extras)  # noqa: E731
    if runner.exists(name, build):
        runner.execute(name, build, values, False)
        return
    with runner.write_connection() as conn:
        sql.upsert(conn, values, extras)


def add(runner: Runner, sql: Statements, values: dict[str, t.Any], extras: tuple[str, ...]) -> bool:
    """Insert the row of KEY unless a live, readable one is there; whether it did.

    ``values`` binds NOW besides the row. One statement where the dialect
    has one: it inserts, or replaces a row expired by NOW. Only when that
    leaves a row in place is the row read, under its lock, and replaced if it
    does not read as a record.
    """
    name = ("add", extras)
    build = lambda: sql.add_statement(extras)  # noqa: E731
    if runner.exists(name, build) and runner.execute(name, build, values, False):
        return True
    try:
        with runner.engine.begin() as conn:
            row: t.Sequence[t.Any] | None
            try:
                row = sql.read_locked(conn, values[KEY])
            except CorruptRecordError:
                row = ()  # there, and the driver cannot read it
            if row is None:
                # Gone meanwhile, or no add statement: a plain INSERT, which
                # fails if another add inserted the row first.
                conn.execute(sa.insert(sql.table).values(sql.row_values(extras)), values)
                return True
            if row and _live_data(sql, row, values[NOW]) is not None:
                return False
            sql.upsert(conn, values, extras)
            return True
    except exc.IntegrityError:
        return False
