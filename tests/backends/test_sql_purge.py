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
