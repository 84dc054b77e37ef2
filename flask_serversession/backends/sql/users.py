"""The SQL backend's user index: one more column of the session table, its index, and
the listing of a user's sessions through it."""

from __future__ import annotations

import typing as t
from datetime import datetime

import sqlalchemy as sa

from ...log import logger
from ..base import CorruptRecordError
from ..base import Record
from .statements import NOW
from .statements import OWNER
from .statements import owner_text
from .statements import USER

if t.TYPE_CHECKING:
    from .runner import Runner
    from .statements import Statements

#: Runs an operation on the ready table as the backend does: ``run(action, operation, *args)``.
Run = t.Callable[..., t.Any]
#: Loads the record of a key.
Load = t.Callable[[str], Record | None]

_LISTING = "user_records"
_LISTING_KEYS = "user_keys"


def owner_type() -> sa.types.TypeEngine[str]:
    """The owner column's type: text, bounded where an index needs a bounded length."""
    return sa.String(255).with_variant(sa.Text(), "postgresql", "sqlite")


def add_owner(table: sa.Table) -> None:
    """Add the owner column to ``table``, and its index.

    Sessions without a user, often most of them, are left out of the index
    where the database can (a partial index on SQLite and PostgreSQL). The
    expiry is not in it: a user's expired rows, until purged, cost a listing
    little, while an index holding the expiry would be written on SQLite by
    every save that renews a signed-in session.
    """
    owner = sa.Column(OWNER, owner_type(), nullable=True)
    table.append_column(owner)
    signed_in = owner.is_not(None)
    # Named by the metadata's naming convention, as ``index=True`` would be.
    sa.Index(None, owner, postgresql_where=signed_in, sqlite_where=signed_in)


def records_of(
    run: Run, runner: Runner, sql: Statements, load: Load, user: str, now: datetime
) -> list[tuple[str, Record]]:
    """The live records of ``user`` in a ready table; damaged rows are logged and skipped.

    :param run: runs an operation as the backend does (errors, retries, locks).
    :param runner: runs the backend's statements.
    :param sql: the backend's statements.
    :param load: the backend's load, for rows read one by one.
    """
    values = {USER: owner_text(user), NOW: now}
    try:
        rows = run("list a user's sessions", runner.execute, _LISTING, sql.user_query, values, True)
    except (TypeError, ValueError):
        # The driver cannot convert a value of a row: read the rows one by one.
        return _one_by_one(run, runner, sql, load, user, now, values)
    found = []
    for row in rows:
        try:
            record = sql.record(row)
        except CorruptRecordError as e:
            logger.error("Skipping a damaged session record: %s", e)
            continue
        if record.expires_at > now:
            found.append((row[0], record))
    return found


def _one_by_one(
    run: Run,
    runner: Runner,
    sql: Statements,
    load: Load,
    user: str,
    now: datetime,
    values: dict[str, t.Any],
) -> list[tuple[str, Record]]:
    build = sql.user_keys_query
    found = []
    for (key,) in run("list a user's sessions", runner.execute, _LISTING_KEYS, build, values, True):
        try:
            record = load(key)
        except CorruptRecordError as e:
            logger.error("Skipping a damaged session record: %s", e)
            continue
        # A row read back names its owner unless it is kept as a digest.
        owned = record is not None and (
            record.user == user or (record.user is None and owner_text(user) != user)
        )
        if owned and record is not None and record.expires_at > now:
            found.append((key, record))
    return found
