"""The session table as the database has it, against its definition: what is missing,
the statements that add it, and adding it to a table the backend owns."""

from __future__ import annotations

import functools
import typing as t
from dataclasses import dataclass
from dataclasses import field

import sqlalchemy as sa
from sqlalchemy import exc

from ...errors import ConfigError
from ...log import logger
from .statements import OWNER

#: What needs each column that a later release added, to say why it is missed.
NEEDED_BY = {OWNER: "SERVERSESSION_USER_KEY needs for its user index"}


@dataclass(frozen=True)
class Gaps:
    """The columns and indexes of a table's definition that the database's table lacks."""

    columns: list[sa.Column[t.Any]] = field(default_factory=list)
    indexes: list[sa.Index] = field(default_factory=list)


def _index_columns(engine: sa.Engine, table: sa.Table) -> set[tuple[str, ...]]:
    found = sa.inspect(engine).get_indexes(table.name, table.schema)
    return {tuple(t.cast(list[str], i["column_names"])) for i in found}


def _column_names(engine: sa.Engine, table: sa.Table) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns(table.name, table.schema)}


def _columns_of(index: sa.Index) -> tuple[str, ...]:
    return tuple(c.name for c in index.columns)


def gaps(engine: sa.Engine, table: sa.Table) -> Gaps:
    """What the existing table ``table`` lacks of its definition (nothing if it is absent)."""
    if not sa.inspect(engine).has_table(table.name, table.schema):
        return Gaps()
    have = _column_names(engine, table)
    indexed = _index_columns(engine, table)
    return Gaps(
        [c for c in table.columns if c.name not in have],
        [i for i in table.indexes if _columns_of(i) not in indexed],
    )


def add_column(table: sa.Table, column: sa.Column[t.Any], dialect: sa.Dialect) -> str:
    """The ``ALTER TABLE`` statement that adds ``column`` to ``table``."""
    name = dialect.identifier_preparer.format_table(table)
    definition = sa.schema.CreateColumn(column).compile(dialect=dialect)
    return f"ALTER TABLE {name} ADD COLUMN {definition}"


def create_index(index: sa.Index, dialect: sa.Dialect, *, online: bool = True) -> str:
    """The ``CREATE INDEX`` statement of ``index``; ``online`` on PostgreSQL builds it
    without blocking writes (``CONCURRENTLY``, outside a transaction)."""
    create = str(sa.schema.CreateIndex(index).compile(dialect=dialect))
    if online and dialect.name == "postgresql":
        create = create.replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1)
    return create


def statements(table: sa.Table, found: Gaps, dialect: sa.Dialect) -> list[str]:
    """The statements that an app runs to bring its table up to date, in order."""
    return [
        *(add_column(table, c, dialect) for c in found.columns),
        *(create_index(i, dialect) for i in found.indexes),
    ]


def missing_columns(found: Gaps) -> str:
    """The missing columns in words, with what needs them: "'owner', which ... needs"."""
    names = [c.name for c in found.columns]
    why = "; ".join(NEEDED_BY[n] for n in names if n in NEEDED_BY)
    return ", ".join(map(repr, names)) + (f", which {why}" if why else "")


def missing_message(table: sa.Table, found: Gaps, dialect: sa.Dialect) -> str:
    """Why the app's table cannot serve, and how to migrate it: the statements one a line."""
    run = "".join(f"\n    {s};" for s in statements(table, found, dialect))
    return (
        f"The session table {table.name!r} has no column {missing_columns(found)}."
        " The table is in the app's own database, so"
        " the app migrates it: with Flask-Migrate, 'flask db migrate' finds it in"
        f" db.metadata, then 'flask db upgrade'; or run:{run}"
    )


def require_current(engine: sa.Engine, table: sa.Table) -> None:
    """Refuse an app's table that lacks a column; log a missing index.

    A table in the app's database is never altered here: altering a table in
    use takes locks, needs rights that the app's database role may lack, and
    leaves a schema that the app's migrations did not make.

    :raises ConfigError: naming the statements that add what is missing.
    """
    found = gaps(engine, table)
    if found.columns:
        raise ConfigError(missing_message(table, found, engine.dialect))
    for index in found.indexes:
        logger.warning(
            "The session table %r has no index on %s: queries that need it read the whole"
            " table. Create it with: %s;",
            table.name,
            ", ".join(map(repr, _columns_of(index))),
            create_index(index, engine.dialect),
        )


def upgrade(engine: sa.Engine, table: sa.Table) -> None:
    """Add to the backend's own table what its definition has and the table lacks.

    Several processes may start at once and each find the same gaps: each
    statement runs on its own, and one that fails counts as done when what
    it adds is there after all (another process added it meanwhile). A new
    column is nullable, so adding it rewrites no row; its index is built
    while holding off writes to the table, briefly, since the column is
    still empty.
    """
    found = gaps(engine, table)
    dialect = engine.dialect
    for column in found.columns:
        there = functools.partial(_has_column, engine, table, column.name)
        _add(engine, add_column(table, column, dialect), there)
        logger.info("Added the column %r to the session table %r.", column.name, table.name)
    for index in found.indexes:
        statement = sa.schema.CreateIndex(index, if_not_exists=True).compile(dialect=dialect)
        there = functools.partial(_has_index, engine, table, _columns_of(index))
        _add(engine, str(statement), there)
        logger.info("Added the index %r to the session table %r.", index.name, table.name)


def _has_column(engine: sa.Engine, table: sa.Table, name: str) -> bool:
    return name in _column_names(engine, table)


def _has_index(engine: sa.Engine, table: sa.Table, columns: tuple[str, ...]) -> bool:
    return columns in _index_columns(engine, table)


def _add(engine: sa.Engine, statement: str, there: t.Callable[[], bool]) -> None:
    """Run ``statement`` in a transaction of its own; a failure is none if ``there()``."""
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(statement)
    except exc.DatabaseError:
        # Another process added it between our look and our statement.
        if not there():
            raise
