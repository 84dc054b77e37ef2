"""DBAPI connections the SQL backend keeps outside the engine's pool.

For SQLite files and PostgreSQL with psycopg, the backend runs its compiled
statements on plain driver connections: made through the engine (its URL,
``connect_args``, creator and ``connect`` listeners all apply), then
detached from the engine's pool and kept by the backend, so they never take
the place of the application's own connections.
"""

from __future__ import annotations

import contextlib
import os
import time
import typing as t
import weakref

import sqlalchemy as sa
from sqlalchemy import exc

if t.TYPE_CHECKING:
    from .compiled import Compiled

# Connections that a forked child inherited. Closing one would end the
# parent's session on the server (libpq sends Terminate), so they stay
# referenced, unused, for the child's lifetime.
_INHERITED: list[object] = []


class _Kept:
    """A connection of the backend, with the cursor it reuses."""

    __slots__ = ("born", "connection", "cursor", "generation", "pid")

    def __init__(self, connection: t.Any, generation: int) -> None:
        self.connection = connection
        self.cursor = connection.cursor()
        self.generation = generation
        self.born = time.monotonic()
        self.pid = os.getpid()


def _close(kept: _Kept) -> None:
    # Closing a connection that died may fail; it is gone either way.
    with contextlib.suppress(Exception):
        kept.connection.close()


def _close_idle(idle: list[_Kept]) -> None:
    pid = os.getpid()
    while idle:
        try:
            kept = idle.pop()
        except IndexError:
            return
        if kept.pid == pid:
            _close(kept)
        else:
            _INHERITED.append(kept)


class Connections:
    """DBAPI connections made through ``engine`` and kept outside its pool.

    An operation takes an idle connection, or makes one, and gives it back;
    so there is at most one connection per operation running at a time, each
    used by one thread at a time, and no more are kept idle than the pool
    would hold (``pool_size`` plus ``max_overflow``). A connection that failed as disconnected
    is dropped along with every idle one (a database restart closes them
    all); so is one older than the pool's ``pool_recycle``. After a fork the
    child makes its own.

    :param engine: the engine to connect with.
    :param setup: called once on each new DBAPI connection.
    """

    def __init__(self, engine: sa.Engine, setup: t.Callable[[t.Any], None]) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self._dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        self._setup = setup
        self._idle: list[_Kept] = []
        self._generation = 0
        self._pid = os.getpid()
        pool = engine.pool
        recycle = getattr(pool, "_recycle", -1)
        self._recycle = float(recycle) if isinstance(recycle, (int, float)) else -1.0
        overflow = getattr(pool, "_max_overflow", 0)
        size = pool.size() if isinstance(pool, sa.QueuePool) else 5
        self._keep = None if overflow < 0 else size + overflow
        # A backend dropped without close() still closes what it kept.
        weakref.finalize(self, _close_idle, self._idle)

    def _take(self) -> _Kept:
        if os.getpid() != self._pid:
            self._after_fork()
        while True:
            try:
                kept = self._idle.pop()
            except IndexError:
                return self._connect()
            if self._recycle < 0 or time.monotonic() - kept.born < self._recycle:
                return kept
            self._close(kept)

    def _connect(self) -> _Kept:
        connection = None
        try:
            fairy = self.engine.raw_connection()
            fairy.detach()
            connection = fairy.dbapi_connection
            self._setup(connection)
            return _Kept(connection, self._generation)
        except BaseException as e:
            if connection is not None:
                with contextlib.suppress(Exception):
                    connection.close()
            if not isinstance(e, self._dbapi_error):
                raise
            # As Engine.connect() raises it.
            disconnected = self.dialect.is_disconnect(t.cast(t.Any, e), None, None)
            if disconnected:
                self._invalidate_pool(e)
            raise exc.DBAPIError.instance(
                None,
                None,
                e,
                self._dbapi_error,
                connection_invalidated=disconnected,
                dialect=self.dialect,
            ) from e

    def _give_back(self, kept: _Kept) -> None:
        keep = self._keep
        if kept.generation == self._generation and (keep is None or len(self._idle) < keep):
            self._idle.append(kept)
        else:
            self._close(kept)

    def _after_fork(self) -> None:
        # No lock: one held by another thread at the fork stays held in the
        # child. Threads of the child that get here together do the same.
        self._generation += 1
        _close_idle(self._idle)  # the parent's are kept, not closed
        self._pid = os.getpid()

    _close = staticmethod(_close)

    def close(self) -> None:
        """Close every idle connection; those in use close when given back."""
        self._generation += 1
        _close_idle(self._idle)

    def _invalidate_pool(self, error: Exception) -> None:
        """Have the engine's pool replace the connections it holds, as SQLAlchemy does.

        A database restart closed them too; they are made anew on checkout.
        """
        pool = self.engine.pool
        # What SQLAlchemy calls on a disconnect; only the invalidation time is set.
        pool._invalidate(t.cast(t.Any, None), error, _checkin=False)

    def run(self, compiled: Compiled, values: t.Mapping[str, t.Any], fetch: bool) -> t.Any:
        """Run ``compiled`` with ``values``; return its rows if ``fetch``, else its row count.

        Each call is one statement committed on its own.

        :raises sqlalchemy.exc.DBAPIError: as SQLAlchemy raises the driver's
            errors; ``connection_invalidated`` when the connection was dead.
        """
        parameters = compiled.parameters(values)
        idle = self._idle
        if idle and self._recycle < 0 and self._pid == os.getpid():
            try:
                kept = idle.pop()
            except IndexError:  # another thread took the last one
                kept = self._take()
        else:
            kept = self._take()
        cursor = kept.cursor
        try:
            cursor.execute(compiled.text, parameters)
            # Read to the end: SQLite ends a statement's transaction only then.
            result = cursor.fetchall() if fetch else cursor.rowcount
        except self._dbapi_error as e:
            raise self._failed(kept, e, compiled.text, parameters) from e
        except BaseException:
            self._close(kept)
            raise
        self._give_back(kept)
        return result

    def _failed(self, kept: _Kept, error: Exception, text: str, parameters: t.Any) -> Exception:
        dbapi_connection = kept.connection
        disconnected = self.dialect.is_disconnect(
            t.cast(t.Any, error), dbapi_connection, kept.cursor
        )
        if disconnected:
            self._close(kept)
            self.close()
            self._invalidate_pool(error)
        elif getattr(dbapi_connection, "closed", False):
            self._close(kept)
        else:
            try:
                if getattr(dbapi_connection, "in_transaction", False):
                    dbapi_connection.rollback()
            except self._dbapi_error:
                self._close(kept)
            else:
                self._give_back(kept)
        return exc.DBAPIError.instance(
            text,
            parameters,
            error,
            self._dbapi_error,
            hide_parameters=True,
            connection_invalidated=disconnected,
            dialect=self.dialect,
        )
