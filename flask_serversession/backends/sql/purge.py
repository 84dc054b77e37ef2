"""The SQL backend's purge: expired rows deleted in batches, each its own short transaction.

SQLite lets one connection write at a time, so a batch holds every other
writer off the database until it commits. There a batch is bounded by time,
not by a fixed number of rows: its size follows how long the last one held
the write lock, and the purge pauses after each batch, so that a save that
waited for it finds the lock free when SQLite's busy handler tries again.
PostgreSQL locks only the rows a batch deletes; its batches have a fixed
size, and a purge that removed a large share of the table vacuums it.
"""

from __future__ import annotations

import functools
import time
import typing as t
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import exc

from ...log import logger

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
_T = t.TypeVar("_T")


class Run(t.Protocol):
    """Runs one operation of the backend, turning its store errors into ``BackendError``."""

    def __call__(self, operation: t.Callable[[], _T], /) -> _T: ...


def purge(
    engine: sa.Engine,
    sql: Statements,
    stale: sa.ColumnElement[bool],
    pacing: Pacing,
    run: Run,
    vacuum_share: float | None = None,
) -> int:
    """Delete the rows matching ``stale`` in batches; return how many.

    On PostgreSQL, a purge that removed at least ``vacuum_share`` of the
    table's rows then vacuums it, so that its dead rows do not wait for
    autovacuum; a failed or skipped vacuum is logged, never raised.

    :param engine: where to delete, in autocommit mode on PostgreSQL.
    :param run: runs one operation, as the backend runs every operation.
    """

    def batch(conn: sa.Connection, size: int) -> int:
        return sql.purge_batch(conn, stale, size)

    if engine.dialect.name == "sqlite" and pacing.batch_seconds is not None:
        return purge_sqlite(engine, batch, pacing, run)
    if engine.dialect.name != "postgresql" or vacuum_share is None:
        return purge_fixed(engine, batch, pacing.most_rows, run)
    state = run(functools.partial(table_state, engine, sql.table))
    removed = purge_fixed(engine, batch, pacing.most_rows, run)
    if needs_vacuum(removed, state, vacuum_share):
        vacuum_logged(engine, sql.table, removed, t.cast(TableState, state))
    return removed


def vacuum_logged(engine: sa.Engine, table: sa.Table, removed: int, state: TableState) -> None:
    """Vacuum ``table`` after a purge of ``removed`` rows; log what came of it."""
    advice = (
        "Autovacuum reclaims them later; to have it come sooner, run ALTER TABLE"
        f" {table.name} SET (autovacuum_vacuum_scale_factor = 0.01)."
    )
    if not state.may_vacuum:
        logger.warning(
            "Purged %d sessions but cannot VACUUM table %r: only its owner or the"
            " database's owner may (from PostgreSQL 17, roles granted MAINTAIN). %s",
            removed, table.name, advice,
        )  # fmt: skip
        return
    start = time.perf_counter()
    try:
        skipped = vacuum(engine, table)
    except exc.SQLAlchemyError as e:
        detail = e.orig if isinstance(e, exc.DBAPIError) else e
        logger.warning(
            "VACUUM of table %r after a purge failed: %s. %s", table.name, detail, advice
        )
        return
    if skipped is not None:
        logger.warning("VACUUM of table %r after a purge was skipped: %s.", table.name, skipped)
        return
    logger.info(
        "Vacuumed table %r after purging %d sessions, in %.1f s.",
        table.name, removed, time.perf_counter() - start,
    )  # fmt: skip


def purge_sqlite(engine: sa.Engine, batch: Batch, pacing: Pacing, run: Run) -> int:
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


def purge_fixed(engine: sa.Engine, batch: Batch, size: int, run: Run) -> int:
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


#: The pace of the vacuum after a purge: autovacuum's own (PostgreSQL 12 and
#: later), where a manual vacuum would otherwise run unthrottled.
VACUUM_PACE = "SET vacuum_cost_delay = '2ms'; SET vacuum_cost_limit = 200"
#: A purge that removed fewer rows leaves them to autovacuum, whatever the share.
VACUUM_MIN_ROWS = 1_000

# The table's estimated rows, and whether this role may vacuum it: its
# owner or the database's owner before PostgreSQL 17, the MAINTAIN
# privilege from then on (superusers may always).
_BEFORE_PURGE = sa.text(
    "SELECT c.reltuples, CASE WHEN current_setting('server_version_num')::int >= 170000"
    " THEN has_table_privilege(c.oid, 'MAINTAIN')"
    " ELSE pg_has_role(c.relowner, 'USAGE') OR pg_has_role(d.datdba, 'USAGE') END"
    " FROM pg_class AS c, pg_database AS d"
    " WHERE c.oid = to_regclass(:name) AND d.datname = current_database()"
)


@dataclass(frozen=True)
class TableState:
    """What a PostgreSQL purge reads of its table first."""

    #: Rows the table held at its last vacuum or analyze; None if never counted.
    rows: float | None
    may_vacuum: bool


def table_state(engine: sa.Engine, table: sa.Table) -> TableState | None:
    """The table's estimated rows and this role's right to vacuum it; None if unknown."""
    name = engine.dialect.identifier_preparer.format_table(table)
    with engine.connect() as conn:
        row = conn.execute(_BEFORE_PURGE, {"name": name}).first()
    if row is None:
        return None
    rows = float(row[0])
    return TableState(rows if rows >= 0 else None, bool(row[1]))


def needs_vacuum(removed: int, state: TableState | None, share: float | None) -> bool:
    """Whether a purge that removed ``removed`` rows left enough dead ones to vacuum now."""
    if share is None or state is None or removed < VACUUM_MIN_ROWS:
        return False
    return state.rows is None or removed >= share * state.rows


def vacuum(engine: sa.Engine, table: sa.Table) -> str | None:
    """``VACUUM (ANALYZE, SKIP_LOCKED)`` the table; return None, or why it was skipped.

    A plain vacuum takes a lock that only schema changes, index builds and
    other vacuums conflict with: saves go on meanwhile. ``SKIP_LOCKED``
    skips the table when such a lock is held (autovacuum already at work)
    instead of waiting for it. It keeps autovacuum's pace
    (:data:`VACUUM_PACE`), so that its reads and writes leave the disk to
    the saves. Needs autocommit: a vacuum cannot run in a transaction.
    """
    name = engine.dialect.identifier_preparer.format_table(table)
    notices: list[str] = []
    with engine.connect() as conn:
        dbapi_connection: t.Any = conn.connection.dbapi_connection
        add = getattr(dbapi_connection, "add_notice_handler", None)  # psycopg 3

        def collect(diagnostic: t.Any) -> None:
            notices.append(str(diagnostic.message_primary))

        if add is not None:
            add(collect)
        try:
            conn.exec_driver_sql(VACUUM_PACE)
            conn.exec_driver_sql(f"VACUUM (ANALYZE, SKIP_LOCKED) {name}")
        finally:
            if add is not None:
                dbapi_connection.remove_notice_handler(collect)
            conn.exec_driver_sql("RESET vacuum_cost_delay; RESET vacuum_cost_limit")
        notices.extend(getattr(dbapi_connection, "notices", ()))  # psycopg2
    skipped = [n.strip() for n in notices if "skipping" in n]
    return "; ".join(skipped) or None
