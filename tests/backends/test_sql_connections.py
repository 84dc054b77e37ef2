"""The SQL backend's own connections: one statement or round trip per operation, reuse,
closing, forks, restarts, and engines that are observed or ping their connections."""

from __future__ import annotations

import hashlib
import os
import selectors
import socket
import threading
import time
import typing as t
from contextlib import contextmanager
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from flask_serversession.backends.base import Delta
from flask_serversession.backends.base import Record
from flask_serversession.backends.sqlalchemy import SQLAlchemyBackend
from flask_serversession.errors import ConfigError
from flask_serversession.errors import SessionTooLargeError

from ..support.postgres import PostgresServer
from ..support.sql import drop_table
from ..support.sql import unique_table_name

NOW = datetime.now(timezone.utc).replace(microsecond=0)
HOUR = timedelta(hours=1)
DATA = {"user": '"alice"', "cart": "[1, 2]"}


def key_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


class Counts:
    """What the engine's pool did: DBAPI connections made, and detached from it."""

    def __init__(self, engine: sa.Engine) -> None:
        self.connects = 0
        self.detaches = 0
        sa.event.listen(engine, "connect", self._connect)
        sa.event.listen(engine, "detach", self._detach)

    def _connect(self, *args: t.Any) -> None:
        self.connects += 1

    def _detach(self, *args: t.Any) -> None:
        self.detaches += 1


def every_operation(backend: SQLAlchemyBackend) -> dict[str, t.Callable[[], object]]:
    """Each hot operation once, in an order that leaves the stored session as it was."""
    key, other = key_of("a"), key_of("b")
    return {
        "create": lambda: backend.create(key, Record(dict(DATA), NOW, NOW + HOUR)),
        "load": lambda: backend.load(key),
        "update": lambda: backend.update(
            key, Delta(NOW + HOUR, {"theme": '"dark"'}, frozenset({"cart"}), max_size=1000), NOW
        ),
        "update expiry": lambda: backend.update(key, Delta(NOW + 2 * HOUR), NOW),
        "touch": lambda: backend.touch(key, NOW + 2 * HOUR, NOW),
        "create other": lambda: backend.create(other, Record({}, NOW, NOW + HOUR)),
        "take": lambda: backend.take(other, NOW),
        "delete": lambda: backend.delete(key),
    }


@pytest.fixture
def fresh_sqlite(tmp_path: Path) -> t.Iterator[SQLAlchemyBackend]:
    backend = SQLAlchemyBackend.from_url(f"sqlite:///{tmp_path / 'sessions.sqlite'}")
    yield backend
    backend.close()


def test_sqlite_operations_are_one_statement_each_and_no_transaction(
    fresh_sqlite: SQLAlchemyBackend,
) -> None:
    traced = trace_statements(fresh_sqlite.engine)
    counts = Counts(fresh_sqlite.engine)
    expected = {
        "create": "INSERT",
        "load": "SELECT",
        "update": "UPDATE",
        "update expiry": "UPDATE",
        "touch": "UPDATE",
        "create other": "INSERT",
        "take": "DELETE",
        "delete": "DELETE",
    }
    operations = every_operation(fresh_sqlite)
    assert operations.keys() == expected.keys()
    for name, operation in operations.items():
        operation()  # the first run also creates the table and a connection
        traced.clear()
        operation()
        # One statement, committed by itself: no BEGIN, no COMMIT.
        assert [s.split()[0] for s in traced] == [expected[name]], (name, traced)
        assert ("RETURNING" in traced[0]) == (name == "take")
    # Everything ran on one connection of the backend's own, taken out of the pool.
    assert counts.detaches == 1
    assert t.cast(sa.QueuePool, fresh_sqlite.engine.pool).checkedout() == 0


def test_sqlite_refused_save_reads_once_on_the_same_connection(
    fresh_sqlite: SQLAlchemyBackend,
) -> None:
    traced = trace_statements(fresh_sqlite.engine)
    key = key_of("a")
    fresh_sqlite.create(key, Record(dict(DATA), NOW, NOW + HOUR))
    traced.clear()
    with pytest.raises(SessionTooLargeError):
        fresh_sqlite.update(
            key, Delta(NOW + HOUR, {"big": '"' + "x" * 100 + '"'}, max_size=50), NOW
        )
    assert [s.split()[0] for s in traced] == ["UPDATE", "SELECT"]
    traced.clear()
    assert fresh_sqlite.take(key, NOW) is not None
    assert len(traced) == 1 and traced[0].startswith("DELETE") and "RETURNING" in traced[0]


class RoundTrips:
    """A loopback TCP relay to ``port`` that counts round trips: requests sent after a reply."""

    def __init__(self, port: int) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._target = port
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, None)
        spoke_last: dict[socket.socket, bool] = {}  # client socket: the client sent last
        sockets: list[socket.socket] = [self._listener]
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(0.05):
                    if key.data is None:
                        client, _ = self._listener.accept()
                        server = socket.create_connection(("127.0.0.1", self._target), 10)
                        selector.register(client, selectors.EVENT_READ, (server, client, True))
                        selector.register(server, selectors.EVENT_READ, (client, client, False))
                        sockets += [client, server]
                        continue
                    other, client, from_client = key.data
                    sock = t.cast(socket.socket, key.fileobj)
                    data = sock.recv(65536)
                    if not data:
                        for s in (sock, other):
                            selector.unregister(s)
                            s.close()
                        continue
                    if from_client and not spoke_last.get(client):
                        self.count += 1
                    spoke_last[client] = from_client
                    other.sendall(data)
        finally:
            for s in sockets:
                s.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


@contextmanager
def relayed_backend(
    postgres_url: str, **kwargs: t.Any
) -> t.Iterator[tuple[SQLAlchemyBackend, RoundTrips]]:
    url = sa.make_url(postgres_url)
    relay = RoundTrips(t.cast(int, url.port))
    backend = SQLAlchemyBackend.from_url(
        url.set(port=relay.port), table_name=unique_table_name(), **kwargs
    )
    try:
        yield backend, relay
    finally:
        drop_table(backend)
        backend.close()
        relay.close()


def trace_statements(engine: sa.Engine) -> list[str]:
    """Return a list that collects the SQL of every statement run on the
    SQLite connections ``engine`` makes from now on."""
    traced: list[str] = []
    sa.event.listen(
        engine,
        "connect",
        lambda dbapi_connection, record: dbapi_connection.set_trace_callback(traced.append),
    )
    return traced


def round_trips(
    operations: t.Mapping[str, t.Callable[[], object]], relay: RoundTrips
) -> dict[str, int]:
    """Round trips each operation makes, once psycopg has prepared its statements."""
    # psycopg prepares a statement on its fifth run, once per connection.
    for _ in range(6):
        for operation in operations.values():
            operation()
    trips = {}
    for name, operation in operations.items():
        before = relay.count
        operation()
        trips[name] = relay.count - before
    return trips


@pytest.mark.parametrize("synchronous_commit", [None, False])
def test_postgres_operations_are_one_round_trip_each(
    postgres_url: str, synchronous_commit: bool | None
) -> None:
    with relayed_backend(postgres_url, synchronous_commit=synchronous_commit) as (backend, relay):
        operations = every_operation(backend)
        assert round_trips(operations, relay) == dict.fromkeys(operations, 1)


def test_connections_are_reused_made_per_concurrent_operation_and_closed(
    sql_backend_fresh: SQLAlchemyBackend,
) -> None:
    backend = sql_backend_fresh
    counts = Counts(backend.engine)
    operations = list(every_operation(backend).values())
    for _ in range(10):
        for operation in operations:
            operation()
    assert counts.detaches == 1
    threads_n = 4
    barrier = threading.Barrier(threads_n, timeout=10)
    failures: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait()
            for _ in range(20):
                backend.load(key_of("a"))
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures
    assert 1 <= counts.detaches <= threads_n
    made = counts.detaches
    backend.close()
    backend.load(key_of("a"))  # closed ones are not used again
    assert counts.detaches == made + 1


@pytest.fixture(params=["sqlite", "postgres"])
def sql_backend_fresh(
    request: pytest.FixtureRequest, tmp_path: Path
) -> t.Iterator[SQLAlchemyBackend]:
    """A backend on an engine of its own that no earlier operation connected."""
    if request.param == "sqlite":
        backend = SQLAlchemyBackend.from_url(f"sqlite:///{tmp_path / 'sessions.sqlite'}")
        yield backend
        backend.close()
        return
    url = request.getfixturevalue("postgres_url")
    backend = SQLAlchemyBackend.from_url(url, table_name=unique_table_name())
    yield backend
    drop_table(backend)
    backend.close()


def test_a_forked_child_makes_its_own_connection(sql_backend_fresh: SQLAlchemyBackend) -> None:
    backend = sql_backend_fresh
    counts = Counts(backend.engine)
    backend.create(key_of("a"), Record(dict(DATA), NOW, NOW + HOUR))
    assert counts.detaches == 1
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            loaded = backend.load(key_of("a"))
            backend.update(key_of("a"), Delta(NOW + HOUR, {"child": "1"}), NOW)
            code = 0 if loaded is not None and counts.detaches == 2 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # The parent's connection still works, and was not replaced.
    loaded = backend.load(key_of("a"))
    assert loaded is not None and loaded.data == {**DATA, "child": "1"}
    assert counts.detaches == 1


def test_restart_with_stale_pooled_connections_is_retried(
    make_postgres: t.Callable[..., PostgresServer],
) -> None:
    server = make_postgres(durable=True)
    backend = SQLAlchemyBackend.from_url(server.url)
    try:
        backend.create(key_of("a"), Record(dict(DATA), NOW, NOW + HOUR))
        # Idle connections left in the engine's pool as well as the backend's own.
        with backend.engine.connect(), backend.engine.connect():
            pass
        expected = dict(DATA)
        modes: tuple[t.Literal["fast", "immediate"], ...] = ("fast", "immediate")
        for mode in modes:
            server.restart(mode)
            loaded = backend.load(key_of("a"))
            assert loaded is not None and loaded.data == expected
            server.restart(mode)
            assert backend.update(key_of("a"), Delta(NOW + HOUR, {"n": f'"{mode}"'}), NOW)
            expected["n"] = f'"{mode}"'
        loaded = backend.load(key_of("a"))
        assert loaded is not None and loaded.data == expected
    finally:
        backend.close()


def test_observed_engine_shows_every_statement(fresh_sqlite: SQLAlchemyBackend) -> None:
    seen: list[str] = []

    def note(conn: t.Any, cursor: t.Any, statement: str, *args: t.Any) -> None:
        seen.append(statement.split()[0])

    operations = every_operation(fresh_sqlite)
    operations["create"]()
    sa.event.listen(fresh_sqlite.engine, "before_cursor_execute", note)
    for operation in operations.values():
        operation()
    assert seen == ["INSERT", "SELECT", "UPDATE", "UPDATE", "UPDATE", "INSERT", "DELETE", "DELETE"]
    sa.event.remove(fresh_sqlite.engine, "before_cursor_execute", note)
    seen.clear()
    for operation in operations.values():
        operation()
    assert seen == []


def test_pinging_pool_is_used_as_configured(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 's.sqlite'}", pool_pre_ping=True)
    backend = SQLAlchemyBackend(engine)
    counts = Counts(engine)
    try:
        for operation in every_operation(backend).values():
            operation()
        assert counts.detaches == 0
        assert backend.load(key_of("a")) is None
    finally:
        engine.dispose()


def test_unpooled_engine_is_used_as_configured(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 's.sqlite'}", poolclass=sa.NullPool)
    backend = SQLAlchemyBackend(engine)
    counts = Counts(engine)
    try:
        operations = every_operation(backend)
        for operation in operations.values():
            operation()
        assert counts.detaches == 0
        assert counts.connects >= len(operations)
    finally:
        engine.dispose()


@pytest.mark.parametrize(("pool_size", "max_overflow", "kept"), [(1, 0, 1), (2, 1, 3), (1, -1, 5)])
def test_idle_connections_kept_are_bounded_as_the_pool(
    tmp_path: Path, pool_size: int, max_overflow: int, kept: int
) -> None:
    engine = sa.create_engine(
        f"sqlite:///{tmp_path / 's.sqlite'}", pool_size=pool_size, max_overflow=max_overflow
    )
    backend = SQLAlchemyBackend(engine)
    threads_n = 5
    # Each thread makes its own connection, then waits until all have one.
    all_connected = threading.Barrier(threads_n, timeout=10)
    failures: list[BaseException] = []

    def work() -> None:
        try:
            assert backend.load(key_of("a")) is None
        except BaseException as e:
            failures.append(e)

    try:
        backend.count(NOW)  # creates the table, through SQLAlchemy
        counts = Counts(engine)
        sa.event.listen(engine, "detach", lambda *args: all_connected.wait())
        threads = [threading.Thread(target=work) for _ in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not failures
        assert counts.detaches == threads_n
        connections = backend._runner.connections
        assert connections is not None and len(connections._idle) == kept
    finally:
        backend.close()
        engine.dispose()


def test_pool_recycle_replaces_old_connections(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 's.sqlite'}", pool_recycle=1)
    backend = SQLAlchemyBackend(engine)
    counts = Counts(engine)
    try:
        backend.create(key_of("a"), Record(dict(DATA), NOW, NOW + HOUR))
        backend.load(key_of("a"))
        assert counts.detaches == 1
        time.sleep(1.1)
        assert backend.load(key_of("a")) is not None
        assert counts.detaches == 2
    finally:
        backend.close()
        engine.dispose()


def test_synchronous_commit_is_postgresql_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="synchronous_commit"):
        SQLAlchemyBackend.from_url(f"sqlite:///{tmp_path / 's.sqlite'}", synchronous_commit=False)


@pytest.mark.parametrize("setting", [False, True])
def test_synchronous_commit_applies_to_session_writes_only(
    postgres_url: str, setting: bool
) -> None:
    backend = SQLAlchemyBackend.from_url(
        postgres_url, table_name=unique_table_name(), synchronous_commit=setting
    )
    try:
        backend.create(key_of("a"), Record(dict(DATA), NOW, NOW + HOUR))
        shown = "on" if setting else "off"
        [kept] = backend._runner.connections._idle  # type: ignore[union-attr]
        assert kept.connection.execute("SHOW synchronous_commit").fetchone() == (shown,)
        # The engine's own connections, which the application may share, keep the server's.
        with backend.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
        # Through SQLAlchemy (an observed engine), a write sets it for its transaction.
        seen: list[str] = []
        sa.event.listen(backend.engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
        assert backend.touch(key_of("a"), NOW + 2 * HOUR, NOW)
        assert seen[0] == f"SET LOCAL synchronous_commit TO {shown}"
        assert seen[1].startswith("UPDATE")
        assert backend.load(key_of("a")) is not None
        assert not any(s.startswith("SET") for s in seen[2:])
    finally:
        drop_table(backend)
        backend.close()


def test_extras_of_varying_columns_each_get_their_statement(
    sql_backend_fresh: SQLAlchemyBackend,
) -> None:
    def extras(values: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
        return {name: values[name] for name in ("user_id", "tenant") if name in values}

    backend = SQLAlchemyBackend(
        sql_backend_fresh.engine,
        table_name=unique_table_name(),
        extra_columns=[sa.Column("user_id", sa.Integer), sa.Column("tenant", sa.String(20))],
        extras=extras,
    )
    c = backend.table.c

    def stored() -> tuple[t.Any, ...]:
        with backend.engine.connect() as conn:
            return tuple(conn.execute(sa.select(c.user_id, c.tenant)).one())

    try:
        key = key_of("a")
        backend.create(key, Record({}, NOW, NOW + HOUR, values={"user_id": 1, "tenant": "t1"}))
        assert stored() == (1, "t1")
        assert backend.update(key, Delta(NOW + HOUR, {"x": "1"}, values={"user_id": 2}), NOW)
        assert stored() == (2, "t1")
        assert backend.update(key, Delta(NOW + HOUR, values={"tenant": "t2"}), NOW)
        assert stored() == (2, "t2")
        assert backend.update(key, Delta(NOW + HOUR, {}, frozenset({"x"}), values={}), NOW)
        assert stored() == (2, "t2")
        loaded = backend.load(key)
        assert loaded is not None and loaded.data == {}
        for n in range(20):  # new values reuse the statements already built
            backend.update(key, Delta(NOW + HOUR, {"x": str(n)}, values={"user_id": n}), NOW)
        assert stored() == (19, "t2")
        assert len(backend._runner.statements) <= 6
    finally:
        drop_table(backend)
        backend.close()
