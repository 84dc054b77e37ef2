from __future__ import annotations

import re
import typing as t
import uuid
from datetime import datetime
from datetime import timezone
from pathlib import Path

import sqlalchemy as sa

from flask_serversession.backends.sqlalchemy import SQLAlchemyBackend

PAGE = Path(__file__).resolve().parent.parent / "docs" / "scaling.rst"


def sql_block_after(marker: str) -> str:
    """The SQL code block that follows ``marker`` on the Scaling page."""
    text = PAGE.read_text(encoding="utf-8")
    block = re.search(
        r"\.\. code-block:: sql\n\n(.+?)(?:\n\n|\n?\Z)", text[text.index(marker) :], re.S
    )
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


def index_probes(plan: dict[str, t.Any]) -> list[str]:
    """The relations whose index a plan probed, one entry per probe."""
    found = []
    if "Index" in plan["Node Type"] and plan.get("Actual Loops", 0) > 0:
        found.append(plan["Relation Name"])
    for child in plan.get("Plans", ()):
        found.extend(index_probes(child))
    return found


def test_partitioned_layout_loads_by_key_probe_every_partition(postgres_url: str) -> None:
    # The page's layout: a load by key alone probes every partition; with the
    # bucket too, one.
    block = sql_block_after("test_partitioned_layout_loads_by_key_probe_every_partition")
    name = f"partitioned_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for statement in block.replace("serversession", name).split(";"):
                if statement.strip():
                    conn.exec_driver_sql(statement)
            for n in (1, 2):
                conn.exec_driver_sql(
                    f"CREATE TABLE {name}_{n} PARTITION OF {name}"
                    f" FOR VALUES FROM ({n}) TO ({n + 1})"
                )
            conn.exec_driver_sql(
                f"INSERT INTO {name} SELECT md5(i::text), mod(i, 3), '{{}}', now(), now()"
                " + interval '1 day' FROM generate_series(1, 300) AS i"
            )
            conn.exec_driver_sql(f"ANALYZE {name}")
            conn.exec_driver_sql("SET enable_seqscan = off")
            key, bucket = conn.exec_driver_sql(f"SELECT key, bucket FROM {name} LIMIT 1").one()

            def probed(where: str) -> list[str]:
                plan = conn.execute(
                    sa.text(
                        f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT data FROM {name} WHERE {where}"
                    ),
                    {"key": key, "bucket": bucket},
                ).scalar_one()
                return index_probes(plan[0]["Plan"])

            assert sorted(probed("key = :key")) == [f"{name}_0", f"{name}_1", f"{name}_2"]
            assert probed("key = :key AND bucket = :bucket") == [f"{name}_{bucket}"]
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        engine.dispose()
