from __future__ import annotations

import re
from datetime import datetime
from datetime import timezone
from pathlib import Path

import sqlalchemy as sa

from flask_serversession.backends.sqlalchemy import SQLAlchemyBackend

PAGE = Path(__file__).resolve().parent.parent / "docs" / "scaling.rst"


def sql_block_after(marker: str) -> str:
    """The SQL code block that follows ``marker`` on the Scaling page."""
    text = PAGE.read_text(encoding="utf-8")
    block = re.search(r"\.\. code-block:: sql\n\n(.+?)\n\n", text[text.index(marker) :], re.S)
    assert block is not None
    return block.group(1).strip()


def test_autovacuum_scale_factor_for_the_session_table(
    postgres_backend: SQLAlchemyBackend,
) -> None:
    # The page's statement, on a session table the backend created.
    statement = sql_block_after("test_autovacuum_scale_factor_for_the_session_table")
    assert statement == ("ALTER TABLE serversession SET (autovacuum_vacuum_scale_factor = 0.01);")
    backend = postgres_backend
    assert backend.count(datetime.now(timezone.utc)) == 0  # first use creates the table
    name = backend.table.name
    with backend.engine.begin() as conn:
        conn.exec_driver_sql(statement.replace("serversession", f'"{name}"'))
        options = conn.execute(
            sa.text("SELECT reloptions FROM pg_class WHERE relname = :name"), {"name": name}
        ).scalar_one()
    assert options == ["autovacuum_vacuum_scale_factor=0.01"]
