from __future__ import annotations

import contextlib
import typing as t

import sqlalchemy as sa
from sqlalchemy import exc

from .compiled import Compiled
from .connections import Connections

_T = t.TypeVar("_T")


def retry_after(error: exc.DBAPIError) -> bool:
    """Whether an operation that failed with ``error`` runs once more, on a new connection.

    It does when a server restart or an idle timeout closed its connection
    while it sat in the pool: SQLAlchemy invalidated it and every pooled
    connection as old, so a second attempt connects afresh. Every operation
    of this backend may run twice: reads change nothing; create, delete,
    touch and purge set the same end state again; a delta sets keys to
    values and the expiry to a time, so applying it twice equals once; a
    take repeated after its delete committed finds nothing and returns None,
    which signs the user out but brings no session back.
    """
    return bool(error.connection_invalidated)


def twice(operation: t.Callable[..., _T], *args: t.Any) -> _T:
    """Run ``operation``; run it again if :func:`retry_after` its error."""
    try:
        return operation(*args)
    except exc.DBAPIError as e:
        if not retry_after(e):
            raise
    return operation(*args)


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
