"""The SQL backend's session table: its definition, and its creation on first use."""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
from sqlalchemy import exc

from ...errors import ConfigError
from . import schema
from .statements import OWNER
from .users import add_owner

_COLUMNS = ("key", "data", "created_at", "expires_at")
#: The ``autovacuum_vacuum_scale_factor`` of a session table created on PostgreSQL.
AUTOVACUUM_SCALE_FACTOR = 0.01


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

    .. versionchanged:: 0.3
        Created on PostgreSQL with ``autovacuum_vacuum_scale_factor = 0.01``.
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
        # Autovacuum then visits the table once 1% of its rows are dead, not 20%.
        postgresql_with={"autovacuum_vacuum_scale_factor": AUTOVACUUM_SCALE_FACTOR},
    )
    if user_index:
        add_owner(table)
    return table


def create_table(engine: sa.Engine, table: sa.Table, upgrade: bool) -> None:
    """Create ``table`` unless it exists; bring an existing one up to its definition.

    :param upgrade: the table is the backend's own: add the columns and
        indexes it lacks. Otherwise it is the app's to migrate, and one that
        lacks a column is refused.
    :raises ConfigError: see :func:`~.schema.require_current`.
    """
    if not sa.inspect(engine).has_table(table.name, table.schema):
        try:
            table.create(engine, checkfirst=True)
            return
        except exc.DatabaseError:
            # Another process created it between the check and the create.
            if not sa.inspect(engine).has_table(table.name, table.schema):
                raise
    if upgrade:
        schema.upgrade(engine, table)
    else:
        schema.require_current(engine, table)
