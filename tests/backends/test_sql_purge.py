"""Purging a large SQL store: saves keep going meanwhile, and no bloat is left behind."""

from __future__ import annotations

import hashlib
import threading
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest
import sqlalchemy as sa

from flask_serversession.backends.base import Delta
from flask_serversession.backends.base import Record
from flask_serversession.backends.sql.purge import Pacing
from flask_serversession.backends.sql.purge import SMALLEST_BATCH
from flask_serversession.backends.sqlalchemy import SQLAlchemyBackend

NOW = datetime(2030, 1, 1, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)
#: Bounds every wait of these tests.
WAIT_SECONDS = 10.0


def key_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def add_expired(backend: SQLAlchemyBackend, count: int) -> None:
    """Insert ``count`` rows that expired an hour before NOW, in one statement."""
    backend.count(NOW)  # first use creates the table
    rows = [
        {
            "key": key_of(f"old{n}"),
            "data": "{}",
            "created_at": NOW - 2 * HOUR,
            "expires_at": NOW - HOUR,
        }
        for n in range(count)
    ]
    with backend.engine.begin() as conn:
        conn.execute(sa.insert(backend.table), rows)


def is_delete(statement: str) -> bool:
    return statement.lstrip().upper().startswith("DELETE")


def test_sqlite_save_goes_in_between_two_purge_batches(
    sqlite_backend: SQLAlchemyBackend,
) -> None:
    # A save that comes while a purge holds SQLite's write lock waits for
    # that batch only, not for the whole purge: it goes in before the next.
    backend = sqlite_backend
    backend.purge_batch_size = 10
    backend.purge_pause_seconds = 0.5  # far longer than any retry of a waiting save
    add_expired(backend, 50)
    live = key_of("live")
    backend.create(live, Record({}, NOW, NOW + HOUR))
    batches: list[bool] = []  # per batch: had the save finished when it began?
    saved = threading.Event()
    save_started = threading.Event()

    def save() -> None:
        save_started.set()
        delta = Delta(NOW + 2 * HOUR, set={"cart": '"full"'})
        assert backend.update(live, delta, NOW)
        saved.set()

    saver = threading.Thread(target=save, name="test-saver", daemon=True)

    def before(conn: t.Any, cursor: t.Any, statement: str, *args: t.Any) -> None:
        if is_delete(statement):
            batches.append(saved.is_set())

    def after(conn: t.Any, cursor: t.Any, statement: str, *args: t.Any) -> None:
        if is_delete(statement) and len(batches) == 1:
            # The first batch has deleted and holds the write lock until it
            # commits: the save must wait for it.
            saver.start()
            assert save_started.wait(WAIT_SECONDS)
            assert not saved.wait(0.2), "the save did not wait for the purge's write lock"

    sa.event.listen(backend.engine, "before_cursor_execute", before)
    sa.event.listen(backend.engine, "after_cursor_execute", after)
    try:
        removed = backend.purge_expired(NOW)
    finally:
        sa.event.remove(backend.engine, "before_cursor_execute", before)
        sa.event.remove(backend.engine, "after_cursor_execute", after)
    saver.join(WAIT_SECONDS)
    assert removed == 50
    assert len(batches) >= 3
    assert batches[0] is False
    assert batches[1] is True, "the save waited past the batch it met"
    record = backend.load(live)
    assert record is not None and record.data == {"cart": '"full"'}


def test_sqlite_purge_batches_follow_the_time_they_hold_the_lock() -> None:
    pacing = Pacing(2_000, batch_seconds=0.015, pause_seconds=0.01)
    assert pacing.first() == SMALLEST_BATCH  # a small first batch measures the store
    assert pacing.next(100, 0.030) == 50  # took twice the time: half the rows
    assert pacing.next(100, 0.005) == 200  # grows at most twofold at a time
    assert pacing.next(1_500, 0.001) == 2_000  # never past the most rows
    assert pacing.next(SMALLEST_BATCH, 10.0) == SMALLEST_BATCH
    fixed = Pacing(2_000)  # PostgreSQL: fixed batches
    assert fixed.first() == fixed.next(100, 10.0) == 2_000


def test_sqlite_purge_removes_every_expired_row_in_timed_batches(
    sqlite_backend: SQLAlchemyBackend,
) -> None:
    backend = sqlite_backend
    backend.purge_pause_seconds = 0.0
    add_expired(backend, 3_000)
    backend.create(key_of("live"), Record({}, NOW, NOW + HOUR))
    sizes: list[int] = []

    def on_result(conn: t.Any, cursor: t.Any, statement: str, *args: t.Any) -> None:
        if is_delete(statement):
            sizes.append(cursor.rowcount)

    sa.event.listen(backend.engine, "after_cursor_execute", on_result)
    try:
        assert backend.purge_expired(NOW) == 3_000
    finally:
        sa.event.remove(backend.engine, "after_cursor_execute", on_result)
    assert sizes[0] == SMALLEST_BATCH
    assert sum(sizes) == 3_000 and max(sizes) <= backend.purge_batch_size
    assert [k for k, _ in backend.items(NOW)] == [key_of("live")]
    assert backend.purge_expired(NOW) == 0


@pytest.fixture
def memory_sqlite_backend() -> t.Iterator[SQLAlchemyBackend]:
    backend = SQLAlchemyBackend.from_url("sqlite://")
    yield backend
    backend.close()


def test_in_memory_sqlite_purges_in_timed_batches(
    memory_sqlite_backend: SQLAlchemyBackend,
) -> None:
    backend = memory_sqlite_backend
    backend.purge_pause_seconds = 0.0
    add_expired(backend, 500)
    assert backend.purge_expired(NOW) == 500
    assert backend.count(NOW - 2 * HOUR) == 0


def table_stats(backend: SQLAlchemyBackend) -> sa.Row[t.Any]:
    """The table's vacuum counts and dead rows, as the statistics say now."""
    with backend.engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT vacuum_count, autovacuum_count, n_dead_tup, last_vacuum"
                " FROM pg_stat_user_tables WHERE relid = to_regclass(:name)"
            ),
            {"name": f'"{backend.table.name}"'},
        ).one()


def dead_rows(backend: SQLAlchemyBackend) -> int:
    """Dead row versions in the table's pages, counted from the pages themselves."""
    with backend.engine.begin() as conn:
        conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pageinspect")
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM generate_series(0,"
                    " pg_relation_size(to_regclass(:name)) / 8192 - 1) AS page,"
                    " heap_page_items(get_raw_page(:table, page::int))"
                    " WHERE t_xmax <> 0 OR lp_flags = 3"
                ),
                {"name": f'"{backend.table.name}"', "table": backend.table.name},
            ).scalar_one()
        )


def test_postgres_table_is_created_for_autovacuum_after_each_purge(
    postgres_backend: SQLAlchemyBackend,
) -> None:
    backend = postgres_backend
    backend.count(NOW)  # first use creates the table
    with backend.engine.connect() as conn:
        options = conn.execute(
            sa.text("SELECT reloptions FROM pg_class WHERE oid = to_regclass(:name)"),
            {"name": f'"{backend.table.name}"'},
        ).scalar_one()
    assert options == ["autovacuum_vacuum_scale_factor=0.01"]


def test_postgres_purge_of_many_rows_leaves_no_dead_rows(
    postgres_backend: SQLAlchemyBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend = postgres_backend
    add_expired(backend, 1_500)
    for n in range(50):
        backend.create(key_of(f"live{n}"), Record({}, NOW, NOW + HOUR))
    with caplog.at_level("INFO", logger="flask_serversession"):
        assert backend.purge_expired(NOW) == 1_500
    assert dead_rows(backend) == 0
    assert table_stats(backend).vacuum_count == 1
    assert "Vacuumed table" in caplog.text
    assert backend.count(NOW) == 50


def test_postgres_purge_of_a_small_share_leaves_the_rows_to_autovacuum(
    postgres_backend: SQLAlchemyBackend,
) -> None:
    backend = postgres_backend
    add_expired(backend, 1_000)
    with backend.engine.connect() as conn:
        conn.exec_driver_sql(f'ANALYZE "{backend.table.name}"')
        conn.commit()
    backend.purge_vacuum_share = 2.0  # more than the table holds
    assert backend.purge_expired(NOW) == 1_000
    assert dead_rows(backend) == 1_000


def test_postgres_purge_warns_when_its_role_may_not_vacuum(
    postgres_backend: SQLAlchemyBackend, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    owner = postgres_backend
    add_expired(owner, 1_200)
    name = owner.table.name
    with owner.engine.begin() as conn:
        conn.exec_driver_sql(
            "DO $$ BEGIN CREATE ROLE session_writer LOGIN;"
            " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
        conn.exec_driver_sql(f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{name}" TO session_writer')
    url = sa.make_url(postgres_url).set(username="session_writer")
    writer = SQLAlchemyBackend.from_url(url, table_name=name, user_index=True)
    try:
        with caplog.at_level("INFO", logger="flask_serversession"):
            assert writer.purge_expired(NOW) == 1_200
    finally:
        writer.close()
        with owner.engine.begin() as conn:
            conn.exec_driver_sql(f'REVOKE ALL ON "{name}" FROM session_writer')
    assert "cannot VACUUM table" in caplog.text
    assert "autovacuum_vacuum_scale_factor = 0.01" in caplog.text
    assert dead_rows(owner) == 1_200


def test_postgres_purge_never_waits_for_a_vacuum_lock(
    postgres_backend: SQLAlchemyBackend, caplog: pytest.LogCaptureFixture
) -> None:
    # Another vacuum (autovacuum, or an index build) holds the lock a vacuum
    # needs: the purge skips its vacuum instead of queueing for it.
    backend = postgres_backend
    add_expired(backend, 1_200)
    name = backend.table.name
    removed: list[int] = []
    with backend.engine.connect() as holder:
        holder.exec_driver_sql(f'LOCK TABLE "{name}" IN SHARE UPDATE EXCLUSIVE MODE')
        purger = threading.Thread(
            target=lambda: removed.append(backend.purge_expired(NOW)), daemon=True
        )
        with caplog.at_level("INFO", logger="flask_serversession"):
            purger.start()
            purger.join(WAIT_SECONDS)
        finished_while_held = not purger.is_alive()
        holder.rollback()
    purger.join(WAIT_SECONDS)
    assert finished_while_held, "the purge waited for the vacuum lock"
    assert removed == [1_200]
    assert "was skipped" in caplog.text
