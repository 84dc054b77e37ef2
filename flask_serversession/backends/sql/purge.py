"""The SQL backend's purge: expired rows deleted in batches, each its own short transaction.

SQLite lets one connection write at a time, so a batch holds every other
writer off the database until it commits. There a batch is bounded by time,
not by a fixed number of rows: its size follows how long the last one held
the write lock, and the purge pauses after each batch, so that a save that
waited for one finds the lock free when it tries again. PostgreSQL locks
only the rows a batch deletes; its batches have a fixed size.
"""

from __future__ import annotations

import time
import typing as t
from dataclasses import dataclass

import sqlalchemy as sa

if t.TYPE_CHECKING:
    from .statements import Statements

#: Fewest rows a time-bounded batch deletes.
SMALLEST_BATCH = 20
#: A time-bounded batch grows to at most this many times the size of the one before.
MOST_GROWTH = 2.0


@dataclass(frozen=True)
class Pacing:
    """How a purge sizes its batches and spaces them.

    :param most_rows: the most rows one batch deletes.
    :param batch_seconds: the time a batch may hold the write lock; None
        for batches of ``most_rows`` each, one after the other.
    :param pause_seconds: the wait after each time-bounded batch.
    """

    most_rows: int
    batch_seconds: float | None = None
    pause_seconds: float = 0.0

    def first(self) -> int:
        """Rows of the first batch: a small one, timed to size the next."""
        if self.batch_seconds is None:
            return self.most_rows
        return max(1, min(self.most_rows, SMALLEST_BATCH))

    def next(self, rows: int, seconds: float) -> int:
        """Rows of the batch after one that deleted ``rows`` holding the lock ``seconds``."""
        if self.batch_seconds is None:
            return self.most_rows
        fitting = rows * self.batch_seconds / max(seconds, 1e-6)
        grown = min(fitting, rows * MOST_GROWTH)
        return max(1, min(self.most_rows, max(SMALLEST_BATCH, round(grown))))


Batch = t.Callable[[sa.Connection, int], int]


def purge(
    engine: sa.Engine,
    sql: Statements,
    stale: sa.ColumnElement[bool],
    pacing: Pacing,
    run: t.Callable[[t.Callable[[], int]], int],
) -> int:
    """Delete the rows matching ``stale`` in batches; return how many.

    :param engine: where to delete, in autocommit mode on PostgreSQL.
    :param run: runs one batch, as the backend runs every operation.
    """

    def batch(conn: sa.Connection, size: int) -> int:
        return sql.purge_batch(conn, stale, size)

    if engine.dialect.name == "sqlite" and pacing.batch_seconds is not None:
        return purge_sqlite(engine, batch, pacing, run)
    return purge_fixed(engine, batch, pacing.most_rows, run)


def purge_sqlite(
    engine: sa.Engine, batch: Batch, pacing: Pacing, run: t.Callable[[t.Callable[[], int]], int]
) -> int:
    """Delete rows with ``batch`` in time-bounded transactions; return how many.

    Each transaction takes the write lock first (``BEGIN IMMEDIATE``), so
    the time it holds the lock is what is measured, not the wait for it.
    """
    size, total = pacing.first(), 0
    held = [0.0]

    def one() -> int:
        with engine.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            start = time.perf_counter()
            removed = batch(conn, size)
            conn.commit()
            held[0] = time.perf_counter() - start
            return removed

    while True:
        removed = run(one)
        total += removed
        if removed < size:
            return total
        size = pacing.next(removed, held[0])
        # A save that waited for this batch tries again within the pause.
        time.sleep(pacing.pause_seconds)


def purge_fixed(
    engine: sa.Engine, batch: Batch, size: int, run: t.Callable[[t.Callable[[], int]], int]
) -> int:
    """Delete rows with ``batch`` in transactions of at most ``size`` rows; return how many."""
    total = 0

    def one() -> int:
        with engine.begin() as conn:
            return batch(conn, size)

    while True:
        removed = run(one)
        total += removed
        if removed < size:
            return total
