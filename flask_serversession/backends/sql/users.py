"""The SQL backend's user index: one more column of the session table, its index, and
the listing of a user's sessions through it."""

from __future__ import annotations

import typing as t
from datetime import datetime

import sqlalchemy as sa

from ...errors import ConfigError
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


def owner_index(table: sa.Table) -> sa.Index | None:
    """The index of ``table`` that starts with the owner column, if it defines one."""
    for index in table.indexes:
        if [c.name for c in index.columns][:1] == [OWNER]:
            return index
    return None


def migration(table: sa.Table, dialect: sa.Dialect) -> list[str]:
    """The statements that add the owner column and its index to ``table`` as it exists."""
    column = sa.schema.CreateColumn(table.c[OWNER]).compile(dialect=dialect)
    name = dialect.identifier_preparer.format_table(table)
    statements = [f"ALTER TABLE {name} ADD COLUMN {column}"]
    index = owner_index(table)
    if index is not None:
        statements.append(_create_index(index, dialect))
    return statements


def _create_index(index: sa.Index, dialect: sa.Dialect) -> str:
    create = str(sa.schema.CreateIndex(index).compile(dialect=dialect))
    if dialect.name == "postgresql":
        # Builds the index without blocking the session writes meanwhile.
        create = create.replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1)
    return create


def check_owner(engine: sa.Engine, table: sa.Table) -> None:
    """Refuse a session table that exists without the owner column.

    A table that exists is never altered here: altering a table in use takes
    locks, needs rights that the app's database role may lack, and leaves a
    schema that the app's migrations did not make.

    :raises ConfigError: naming the statements that add it.
    """
    inspector = sa.inspect(engine)
    columns = {c["name"] for c in inspector.get_columns(table.name, table.schema)}
    if OWNER not in columns:
        statements = "".join(f"\n    {s};" for s in migration(table, engine.dialect))
        raise ConfigError(
            f"The session table {table.name!r} has no column {OWNER!r}, which"
            " SERVERSESSION_USER_KEY needs for its user index. Add it with a migration"
            " (Flask-Migrate: 'flask db migrate' finds it in db.metadata), or run:"
            f"{statements}"
        )
    indexes = inspector.get_indexes(table.name, table.schema)
    index = owner_index(table)
    if index is not None and not any(i["column_names"][:1] == [OWNER] for i in indexes):
        logger.warning(
            "The session table %r has no index on %r: listing a user's sessions reads"
            " the whole table. Create it with: %s;",
            table.name,
            OWNER,
            _create_index(index, engine.dialect),
        )


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
