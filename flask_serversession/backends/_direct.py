"""Session statements compiled once and run on DBAPI connections the backend keeps.

Building, compiling and executing a statement through SQLAlchemy Core costs
far more than the database takes to run a primary-key lookup. For SQLite
files and PostgreSQL with psycopg, the SQL backend compiles each statement
once and runs it on plain driver connections: made through the engine (its
URL, ``connect_args``, creator and ``connect`` listeners all apply), then
detached from the engine's pool and kept by the backend, so they never take
the place of the application's own connections.
"""

from __future__ import annotations

import contextlib
import os
import time
import typing as t
import weakref
from datetime import datetime
from datetime import timezone

import sqlalchemy as sa
from sqlalchemy import exc

_Rows = list[t.Sequence[t.Any]]

# Connections that a forked child inherited. Closing one would end the
# parent's session on the server (libpq sends Terminate), so they stay
# referenced, unused, for the child's lifetime.
_INHERITED: list[object] = []


class Compiled:
    """One statement, compiled for a dialect, that binds parameters for the driver.

    :param statement: a statement whose variable parts are ``bindparam`` s.
    :param dialect: the dialect to compile for.
    """

    __slots__ = ("_template", "_variables", "text")

    def __init__(self, statement: sa.ClauseElement, dialect: sa.Dialect) -> None:
        compiled = t.cast(sa.sql.compiler.SQLCompiler, statement.compile(dialect=dialect))
        if "__[POSTCOMPILE_" in compiled.string:
            raise ValueError("Statements with expanding parameters cannot be compiled once.")
        self.text = compiled.string
        positional = bool(compiled.positional)
        names = list(compiled.positiontup or ()) if positional else list(compiled.binds)
        #: The parameters as the driver takes them, the statement's own
        #: literals (bound constants) converted once, the variables None.
        self._template: t.Any = [None] * len(names) if positional else dict.fromkeys(names)
        #: (index or name, parameter name, converter) of each variable.
        self._variables: list[tuple[t.Any, str, t.Callable[[t.Any], t.Any] | None]] = []
        for index, name in enumerate(names):
            bind = compiled.binds[name]
            processor: t.Callable[[t.Any], t.Any] | None
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            sqlite_time = dialect.name == "sqlite" and isinstance(bind.type, sa.DateTime)
            if processor is not None and sqlite_time:
                processor = _sqlite_datetime(processor)
            slot: t.Any = index if positional else name
            if bind.required:
                self._variables.append((slot, name, processor))
            else:
                value = bind.effective_value
                self._template[slot] = value if processor is None else processor(value)

    def parameters(self, values: t.Mapping[str, t.Any]) -> t.Any:
        """The driver's parameters: ``values`` by name, with the statement's constants."""
        bound = self._template.copy()
        for slot, name, processor in self._variables:
            value = values[name]
            bound[slot] = value if processor is None else processor(value)
        return bound


def _sqlite_datetime(processor: t.Callable[[t.Any], t.Any]) -> t.Callable[[t.Any], t.Any]:
    """SQLAlchemy's text for a datetime in SQLite, faster for the UTC ones the backend binds."""

    def process(value: t.Any) -> t.Any:
        if isinstance(value, datetime) and value.tzinfo is timezone.utc:
            # str() is isoformat(" "): the fields SQLAlchemy writes, then "+00:00".
            text = str(value)[:-6]
            return text if value.microsecond else f"{text}.000000"
        return processor(value)

    return process


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


def statement_listeners(engine: sa.Engine) -> bool:
    """Whether code observes the statements ``engine`` runs (tracing, query logs).

    Such listeners see only what runs through SQLAlchemy Core.
    """
    if not engine._has_events:
        return False
    dispatch = engine.dispatch
    return bool(dispatch.before_cursor_execute or dispatch.after_cursor_execute)


def supported(engine: sa.Engine) -> bool:
    """Whether the backend runs its statements on connections of its own for ``engine``.

    SQLite files through ``sqlite3`` and PostgreSQL through psycopg 3, where
    the engine pools connections (not ``NullPool``) and does not ping them.
    """
    dialect, pool = engine.dialect, engine.pool
    if (dialect.name, dialect.driver) not in (("sqlite", "pysqlite"), ("postgresql", "psycopg")):
        return False
    if not isinstance(pool, sa.QueuePool) or getattr(pool, "_pre_ping", False):
        return False
    database = engine.url.database
    return dialect.name != "sqlite" or database not in (None, "", ":memory:")


_MISSING = object()


class Runner:
    """Runs the SQL backend's statements, each built once by name.

    On connections of its own where :func:`supported` and nothing observes
    the engine's statements; otherwise through SQLAlchemy, on ``direct``.

    :param engine: the backend's engine.
    :param synchronous_commit: PostgreSQL's setting for writes; None for the server's.
    """

    def __init__(self, engine: sa.Engine, synchronous_commit: bool | None) -> None:
        self.engine = engine
        # On PostgreSQL every operation but a merge under a row lock is a
        # single statement, so autocommit saves the BEGIN and COMMIT round
        # trips around each one.
        self.direct = (
            engine.execution_options(isolation_level="AUTOCOMMIT")
            if engine.dialect.name == "postgresql"
            else engine
        )
        self.synchronous_commit = synchronous_commit
        #: Statements by name; None where the dialect has none.
        self.statements: dict[t.Hashable, t.Any] = {}
        self.compiled: dict[t.Hashable, Compiled] = {}
        self.connections = Connections(engine, self._setup) if supported(engine) else None

    def _setup(self, dbapi_connection: t.Any) -> None:
        """Prepare a connection of the backend's own: each statement commits by itself."""
        if self.engine.dialect.name == "sqlite":
            dbapi_connection.isolation_level = None
            return
        dbapi_connection.autocommit = True
        # Timestamps then load in UTC as they are compared, with no conversion.
        settings = "SET TimeZone TO 'UTC'"
        if self.synchronous_commit is not None:
            settings += f"; SET synchronous_commit TO {self._setting()}"
        dbapi_connection.execute(settings)

    def _setting(self) -> str:
        return "on" if self.synchronous_commit else "off"

    def statement(self, name: t.Hashable, build: t.Callable[[], t.Any]) -> t.Any:
        """The statement ``name``, built once; None where the dialect has none."""
        statement = self.statements.get(name, _MISSING)
        if statement is _MISSING:
            statement = self.statements[name] = build()
        return statement

    def exists(self, name: t.Hashable, build: t.Callable[[], t.Any]) -> bool:
        """Whether the dialect has statement ``name``; see :meth:`statement`."""
        return name in self.compiled or self.statement(name, build) is not None

    def execute(
        self, name: t.Hashable, build: t.Callable[[], t.Any], values: dict[str, t.Any], fetch: bool
    ) -> t.Any:
        """Run statement ``name`` committed on its own; its rows if ``fetch``, else its row count.

        :param build: returns the statement, on first use.
        """
        compiled = self.compiled.get(name)
        connections = self.connections
        if compiled is None or connections is None or self.engine._has_events:
            return self._execute_first(name, build, values, fetch)
        return connections.run(compiled, values, fetch)

    def _execute_first(
        self, name: t.Hashable, build: t.Callable[[], t.Any], values: dict[str, t.Any], fetch: bool
    ) -> t.Any:
        """:meth:`execute` the first time, or through SQLAlchemy."""
        statement = self.statement(name, build)
        connections = self.connections
        if connections is not None and not statement_listeners(self.engine):
            compiled = self.compiled.get(name)
            if compiled is None:
                compiled = self.compiled[name] = Compiled(statement, self.engine.dialect)
            return connections.run(compiled, values, fetch)
        reading = isinstance(statement, sa.Select)
        with self.direct.connect() if reading else self.write_connection() as conn:
            result = conn.execute(statement, values)
            return result.all() if fetch else result.rowcount

    def write_connection(self) -> t.ContextManager[sa.Connection]:
        """A SQLAlchemy connection for a write, committed at the end of the block."""
        if self.synchronous_commit is None:
            return self.direct.begin()
        return self._sync_transaction()

    @contextlib.contextmanager
    def _sync_transaction(self) -> t.Iterator[sa.Connection]:
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"SET LOCAL synchronous_commit TO {self._setting()}")
            yield conn

    def close(self) -> None:
        """Close the connections of the backend's own."""
        if self.connections is not None:
            self.connections.close()
