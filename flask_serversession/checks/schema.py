from __future__ import annotations

import typing as t

from . import Finding

if t.TYPE_CHECKING:
    from ..backends.sql import SQLAlchemyBackend


def check_schema(backend: SQLAlchemyBackend) -> t.Iterator[Finding]:
    """An error when the app's own session table lacks a column its settings need.

    The backend's own table (no Flask-SQLAlchemy ``db``) is brought up to date
    at first use, so only a table the app migrates itself is reported. A
    store that cannot be read is left to the other checks.
    """
    import sqlalchemy as sa

    from ..backends.sql import schema

    if backend.upgrade_table:
        return
    try:
        found = schema.gaps(backend.engine, backend.table)
    except sa.exc.SQLAlchemyError:
        return
    if not found.columns:
        return
    statements = schema.statements(backend.table, found, backend.engine.dialect)
    yield Finding(
        "serversession.E019",
        f"session table {backend.table.name!r}",
        None,
        f"It has no column {schema.missing_columns(found)}: every request that uses the"
        " session fails until the app migrates the table, which is in its own database.",
        "with Flask-Migrate, 'flask db migrate' then 'flask db upgrade' (the table is in"
        " db.metadata); or run: " + "; ".join(statements) + ";",
    )
