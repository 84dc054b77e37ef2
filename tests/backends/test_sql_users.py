"""The SQL backend's user index: the ``owner`` column, its statements, its index, and
tables made before it existed. The behaviour every backend shares is in test_contract.py."""

from __future__ import annotations

import hashlib
import logging
import re
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_serversession import ServerSession
from flask_serversession.backends.base import CorruptRecordError
from flask_serversession.backends.base import Delta
from flask_serversession.backends.base import Record
from flask_serversession.backends.sql.dialects import SQLiteStatements
from flask_serversession.backends.sql.statements import Statements
from flask_serversession.backends.sqlalchemy import make_table
from flask_serversession.backends.sqlalchemy import SQLAlchemyBackend
from flask_serversession.errors import ConfigError

from ..conftest import session_cookie
from ..conftest import store_of
from ..support.sql import dispose_fsa
from ..support.sql import drop_table
from ..support.sql import fsa_app
from ..support.sql import unique_table_name
from .test_sql_connections import every_operation
from .test_sql_connections import relayed_backend
from .test_sql_connections import round_trips
from .test_sql_connections import trace_statements

NOW = datetime.now(timezone.utc).replace(microsecond=0)
HOUR = timedelta(hours=1)

server_session = ServerSession()


def key_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def of(
    user: str | None, data: dict[str, str] | None = None, expires_in: timedelta = HOUR
) -> Record:
    return Record({"n": "1"} if data is None else data, NOW, NOW + expires_in, user=user)


def listed(backend: SQLAlchemyBackend, user: str, now: datetime = NOW) -> set[str]:
    return {key for key, _record in backend.user_records(user, now)}


def owners(backend: SQLAlchemyBackend) -> dict[str, str | None]:
    c = backend.table.c
    with backend.engine.connect() as conn:
        return {key: owner for key, owner in conn.execute(sa.select(c.key, c.owner))}


@pytest.fixture
def engine_of(
    request: pytest.FixtureRequest, tmp_path: Path
) -> t.Iterator[t.Callable[[str], sa.Engine]]:
    """Return an engine per dialect name, made on first use, disposed at the end."""
    engines: dict[str, sa.Engine] = {}

    def get(name: str) -> sa.Engine:
        if name not in engines:
            url = (
                request.getfixturevalue("postgres_url")
                if name == "postgres"
                else f"sqlite:///{tmp_path / 'sessions.sqlite'}"
            )
            engines[name] = sa.create_engine(url)
        return engines[name]

    yield get
    for engine in engines.values():
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def make_backend(
    request: pytest.FixtureRequest, engine_of: t.Callable[[str], sa.Engine]
) -> t.Iterator[t.Callable[..., SQLAlchemyBackend]]:
    """Return a factory of backends on one database; their tables are dropped at the end."""
    made: list[SQLAlchemyBackend] = []

    def make(**kwargs: t.Any) -> SQLAlchemyBackend:
        kwargs.setdefault("table_name", unique_table_name())
        backend = SQLAlchemyBackend(engine_of(request.param), **kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        drop_table(backend)
        backend.close()


@pytest.fixture(params=["sqlite", "postgres", "fsa_sqlite", "fsa_postgres"])
def indexed(request: pytest.FixtureRequest) -> SQLAlchemyBackend:
    """A backend with the user index, built as each kind of app builds it."""
    return t.cast(SQLAlchemyBackend, request.getfixturevalue(f"{request.param}_backend"))


# The table.


def test_table_with_the_user_index(make_backend: t.Callable[..., SQLAlchemyBackend]) -> None:
    backend = make_backend(user_index=True)
    table = backend.table
    assert [c.name for c in table.columns] == ["key", "data", "created_at", "expires_at", "owner"]
    assert table.c.owner.nullable
    backend.count(NOW)  # first use creates the table

    dialect = backend.engine.dialect.name
    inspector = sa.inspect(backend.engine)
    columns = {c["name"]: c for c in inspector.get_columns(table.name)}
    assert list(columns) == ["key", "data", "created_at", "expires_at", "owner"]
    assert columns["owner"]["nullable"] and isinstance(columns["owner"]["type"], sa.Text)
    indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes(table.name)}
    owner_index = f"ix_{table.name}_owner"
    assert indexes == {f"ix_{table.name}_expires_at": ["expires_at"], owner_index: ["owner"]}
    # Sessions without a user stay out of the index.
    query = (
        "SELECT indexdef FROM pg_indexes WHERE indexname = %s"
        if dialect == "postgresql"
        else "SELECT sql FROM sqlite_master WHERE name = ?"
    )
    with backend.engine.connect() as conn:
        definition = conn.exec_driver_sql(query, (owner_index,)).scalar_one()
    assert re.search(r"WHERE \(?owner IS NOT NULL\)?$", definition), definition


def test_make_table_for_migrations() -> None:
    metadata = sa.MetaData(naming_convention={"ix": "ix_%(table_name)s_%(column_0_name)s"})
    table = make_table("sessions", metadata, user_index=True)
    assert "owner" in table.c
    assert {i.name for i in table.indexes} == {"ix_sessions_expires_at", "ix_sessions_owner"}
    assert [c.name for c in make_table("plain", metadata).columns] == [
        "key",
        "data",
        "created_at",
        "expires_at",
    ]


def test_user_key_in_config_turns_the_index_on(
    make_app: t.Callable[..., Flask], tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'sessions.sqlite'}"
    plain = store_of(make_app("sqlalchemy", SERVERSESSION_SQLALCHEMY_URI=uri)).backend
    assert isinstance(plain, SQLAlchemyBackend) and not plain.user_index
    assert "owner" not in plain.table.c

    app = make_app(
        "sqlalchemy",
        SERVERSESSION_SQLALCHEMY_URI=f"sqlite:///{tmp_path / 'other.sqlite'}",
        SERVERSESSION_USER_KEY="_user_id",
    )
    backend = store_of(app).backend
    assert isinstance(backend, SQLAlchemyBackend) and backend.user_index
    client = app.test_client()
    client.post("/set", json={"_user_id": 42, "cart": ["tea"]})
    with app.app_context():
        (info,) = server_session.user_sessions(42)
        assert info.storage_key == store_of(app).storage_key(
            t.cast(str, store_of(app).sid_from(session_cookie(client)))
        )
        assert server_session.revoke_user("42", keep_current=False) == 1
    assert client.get("/dump").json == {}


def test_flask_sqlalchemy_metadata_holds_the_column(tmp_path: Path) -> None:
    """Flask-Migrate compares db.metadata with the database: the column is in it."""
    app, db = fsa_app(
        f"sqlite:///{tmp_path / 'app.sqlite'}", tmp_path / "instance", SERVERSESSION_USER_KEY="uid"
    )
    app.config["SECRET_KEY"] = "test secret key"
    ServerSession(app)
    try:
        table = db.metadata.tables["serversession"]
        assert "owner" in table.c
        assert any([c.name for c in i.columns] == ["owner"] for i in table.indexes)
    finally:
        dispose_fsa(app, db)


def test_metadata_shared_with_an_app_without_the_index(
    make_backend: t.Callable[..., SQLAlchemyBackend],
) -> None:
    metadata = sa.MetaData()
    name = unique_table_name()
    without = make_backend(table_name=name, metadata=metadata)
    backend = make_backend(table_name=name, metadata=metadata, user_index=True)
    assert backend.table is without.table and "owner" in without.table.c
    backend.create(key_of("a"), of("alice"))
    without.create(key_of("b"), of(None))
    loaded = without.load(key_of("a"))
    assert loaded is not None and loaded.user is None  # that app reads no owner
    assert listed(backend, "alice") == {key_of("a")}


def test_extra_column_named_owner_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'owner'.*Rename the extra column"):
        make_table("sessions", sa.MetaData(), [sa.Column("owner", sa.Integer)], user_index=True)
    # The extra column of the docs' example is not in the way.
    table = make_table(
        "sessions", sa.MetaData(), [sa.Column("user_id", sa.Integer)], user_index=True
    )
    assert [c.name for c in table.columns][-2:] == ["user_id", "owner"]


def test_backend_without_the_index_refuses_users(
    make_backend: t.Callable[..., SQLAlchemyBackend],
) -> None:
    backend = make_backend()
    with pytest.raises(ConfigError, match="user_index=True"):
        backend.create(key_of("a"), of("alice"))
    backend.create(key_of("a"), of(None))
    for delta in (
        Delta(NOW + HOUR, {"u": '"alice"'}, user="alice", user_changed=True),
        Delta(NOW + HOUR, user=None, user_changed=True),
    ):
        with pytest.raises(ConfigError, match="user_index=True"):
            backend.update(key_of("a"), delta, NOW)
    with pytest.raises(ConfigError, match="user_index=True"):
        backend.user_records("alice", NOW)
    assert backend.load(key_of("a")) == of(None)


# A table made before the user index.


def test_table_without_the_column_says_how_to_add_it(
    make_backend: t.Callable[..., SQLAlchemyBackend],
) -> None:
    name = unique_table_name()
    old = make_backend(table_name=name)
    old.create(key_of("old"), of(None, {"_user_id": '"alice"'}))
    backend = make_backend(table_name=name, user_index=True)
    calls: list[t.Callable[[], object]] = [
        lambda: backend.load(key_of("old")),
        lambda: backend.create(key_of("new"), of("alice")),
        lambda: backend.user_records("alice", NOW),
        lambda: backend.count(NOW),
    ]
    messages = []
    for call in calls:
        with pytest.raises(ConfigError) as raised:
            call()
        messages.append(str(raised.value))
    assert len(set(messages)) == 1
    message = messages[0]
    assert "SERVERSESSION_USER_KEY" in message and "flask db migrate" in message
    statements = re.findall(r"^    (.*);$", message, re.MULTILINE)
    assert [s.split(" (")[0].split(" ON ")[0] for s in statements] == [
        f"ALTER TABLE {name} ADD COLUMN owner TEXT",
        f"CREATE INDEX{' CONCURRENTLY' if 'postgresql' in old.engine.dialect.name else ''}"
        f" ix_{name}_owner",
    ]
    columns = sa.inspect(old.engine).get_columns(name)
    assert "owner" not in [c["name"] for c in columns]  # nothing was altered

    # The statements run as given (CONCURRENTLY outside a transaction), and
    # the same backend works from then on.
    with backend.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    assert backend.load(key_of("old")) == of(None, {"_user_id": '"alice"'})
    assert listed(backend, "alice") == set()
    # Sessions stored before join the index at their next save that names the user.
    delta = Delta(NOW + HOUR, {"seen": "1"}, user="alice", user_changed=True)
    assert backend.update(key_of("old"), delta, NOW)
    assert listed(backend, "alice") == {key_of("old")}


def test_column_without_its_index_is_logged(
    make_backend: t.Callable[..., SQLAlchemyBackend], caplog: pytest.LogCaptureFixture
) -> None:
    name = unique_table_name()
    backend = make_backend(table_name=name, user_index=True)
    backend.count(NOW)
    with backend.engine.begin() as conn:
        conn.exec_driver_sql(f"DROP INDEX ix_{name}_owner")
    again = make_backend(table_name=name, user_index=True)
    with caplog.at_level(logging.WARNING, logger="flask_serversession"):
        assert again.user_records("alice", NOW) == []
    (warning,) = [r for r in caplog.records if r.name == "flask_serversession"]
    assert warning.levelno == logging.WARNING
    assert "CREATE INDEX" in warning.getMessage() and f"ix_{name}_owner" in warning.getMessage()


# Statements: the owner is written by the save's own statement.


def traced_sqlite(tmp_path: Path) -> tuple[SQLAlchemyBackend, list[str]]:
    backend = SQLAlchemyBackend.from_url(f"sqlite:///{tmp_path / 's.sqlite'}", user_index=True)
    return backend, trace_statements(backend.engine)


def test_sqlite_user_operations_are_one_statement_each(tmp_path: Path) -> None:
    backend, traced = traced_sqlite(tmp_path)
    key = key_of("a")
    to_bob = Delta(NOW + HOUR, {"_user_id": '"bob"'}, user="bob", user_changed=True)
    operations: dict[str, tuple[t.Callable[[], object], str]] = {
        "create": (lambda: backend.create(key, of("alice")), "INSERT"),
        "change of user": (lambda: backend.update(key, to_bob, NOW), "UPDATE"),
        "sign out, no data": (
            lambda: backend.update(key, Delta(NOW + HOUR, user=None, user_changed=True), NOW),
            "UPDATE",
        ),
        "same user": (lambda: backend.update(key, Delta(NOW + HOUR, {"n": "2"}), NOW), "UPDATE"),
        "list": (lambda: backend.user_records("bob", NOW), "SELECT"),
    }
    try:
        for name, (operation, kind) in operations.items():
            operation()  # the first run also creates the table and a connection
            traced.clear()
            operation()
            assert [s.split()[0] for s in traced] == [kind], (name, traced)
            if kind != "SELECT":
                writes_owner = name != "same user"
                assert ("owner" in traced[0].split(" WHERE ")[0]) == writes_owner, (name, traced)
        assert owners(backend) == {key: None}

        # The listing is found through the owner index.
        with backend.engine.connect() as conn:
            plan = conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + traced[0].replace("'bob'", "?"), ("bob",)
            ).all()
        assert f"USING INDEX ix_{backend.table.name}_owner" in str(plan), plan
    finally:
        backend.close()


def test_postgres_user_operations_are_one_round_trip_each(postgres_url: str) -> None:
    with relayed_backend(postgres_url, user_index=True) as (backend, relay):
        key = key_of("u")
        operations: dict[str, t.Callable[[], object]] = {
            **every_operation(backend),
            "create a user's": lambda: backend.create(key, of("alice")),
            "change of user": lambda: backend.update(
                key, Delta(NOW + HOUR, {"_user_id": '"bob"'}, user="bob", user_changed=True), NOW
            ),
            "change back": lambda: backend.update(
                key,
                Delta(NOW + HOUR, {"_user_id": '"alice"'}, user="alice", user_changed=True),
                NOW,
            ),
            "list": lambda: backend.user_records("alice", NOW),
        }
        assert round_trips(operations, relay) == dict.fromkeys(operations, 1)
        assert listed(backend, "alice") == {key}


def test_postgres_listing_uses_the_partial_index_in_a_generic_plan(postgres_url: str) -> None:
    backend = SQLAlchemyBackend.from_url(
        postgres_url, table_name=unique_table_name(), user_index=True
    )
    try:
        backend.count(NOW)
        query = backend._sql.user_query().compile(dialect=backend.engine.dialect)
        names = list(query.params)
        text = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m[1]) + 1}", str(query))
        types = ", ".join("text" if name == "p_user" else "timestamptz" for name in names)
        arguments = ", ".join("'alice'" if name == "p_user" else "now()" for name in names)
        with backend.engine.connect() as conn:
            # As psycopg runs it once prepared: one plan for every user.
            conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
            conn.exec_driver_sql("SET enable_seqscan = off")
            conn.exec_driver_sql(f"PREPARE listing({types}) AS {text}")
            plan = conn.exec_driver_sql(f"EXPLAIN EXECUTE listing({arguments})").scalars().all()
        assert f"ix_{backend.table.name}_owner" in "\n".join(plan), plan
    finally:
        drop_table(backend)
        backend.close()


def test_through_sqlalchemy_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the backend has no connections of its own, or no one-statement merge."""
    backend = SQLAlchemyBackend.from_url(f"sqlite:///{tmp_path / 's.sqlite'}", user_index=True)
    seen: list[str] = []
    sa.event.listen(
        backend.engine, "before_cursor_execute", lambda *args: seen.append(args[2].split()[0])
    )
    try:
        key = key_of("a")
        backend.create(key, of("alice"))
        assert listed(backend, "alice") == {key}
        assert "INSERT" in seen and "SELECT" in seen  # observed: run through SQLAlchemy

        generic = Statements(backend.table, backend.engine.dialect, user_index=True)
        generic.delete_returning = False
        monkeypatch.setattr(backend, "_sql", generic)
        backend._runner.statements.clear()
        backend._runner.compiled.clear()
        to_bob = Delta(NOW + HOUR, {"_user_id": '"bob"'}, user="bob", user_changed=True)
        assert backend.update(key, to_bob, NOW)  # merged under a lock
        assert (listed(backend, "alice"), listed(backend, "bob")) == (set(), {key})
        assert backend.update(key, Delta(NOW + HOUR, user="carol", user_changed=True), NOW)
        backend.create(key_of("b"), of("carol"))  # update, then insert
        assert listed(backend, "carol") == {key, key_of("b")}
        taken = backend.take(key, NOW)
        assert taken is not None and taken.user == "carol"
        assert taken.data == {"n": "1", "_user_id": '"bob"'}
        assert listed(backend, "carol") == {key_of("b")}
    finally:
        backend.close()


# Reading rows back.


def test_records_carry_their_user(indexed: SQLAlchemyBackend) -> None:
    indexed.create(key_of("a"), of("alice"))
    indexed.create(key_of("anonymous"), of(None))
    assert t.cast(Record, indexed.load(key_of("a"))).user == "alice"
    assert t.cast(Record, indexed.load(key_of("anonymous"))).user is None
    assert {k: r.user for k, r in indexed.items(NOW)} == {
        key_of("a"): "alice",
        key_of("anonymous"): None,
    }
    assert t.cast(Record, indexed.take(key_of("a"), NOW)).user == "alice"


def test_user_ids_are_text_of_any_length(indexed: SQLAlchemyBackend) -> None:
    users = ["42", "ünï cødé ✓", "x" * 1000, "a'; DROP TABLE x; --", "%", "_"]
    for n, user in enumerate(users):
        indexed.create(key_of(str(n)), of(user))
    for n, user in enumerate(users):
        assert listed(indexed, user) == {key_of(str(n))}, user
    assert listed(indexed, "4") == set()


def plant(backend: SQLAlchemyBackend, key: str, column: str, value: t.Any) -> None:
    mark = "?" if backend.engine.dialect.name == "sqlite" else "%s"
    with backend.engine.begin() as conn:
        conn.exec_driver_sql(
            f'UPDATE "{backend.table.name}" SET "{column}" = {mark} WHERE "key" = {mark}',
            (value, key),
        )


def test_damaged_rows_are_skipped_and_logged(
    indexed: SQLAlchemyBackend, caplog: pytest.LogCaptureFixture
) -> None:
    sqlite = indexed.engine.dialect.name == "sqlite"
    damages: list[tuple[str, t.Any]] = [
        ("data", "not json"),
        ("created_at", "garbage" if sqlite else "infinity"),
    ]
    if sqlite:
        damages.append(("owner", b"alice"))
    for n in range(3):
        indexed.create(key_of(f"good {n}"), of("alice"))
    for column, value in damages:
        indexed.create(key_of(column), of("alice"))
        plant(indexed, key_of(column), column, value)
    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        assert listed(indexed, "alice") == {key_of(f"good {n}") for n in range(3)}
    errors = [r for r in caplog.records if r.name == "flask_serversession"]
    # A blob owner does not match the user: its row is not even read.
    assert len(errors) == len(damages) - sqlite
    assert all(r.levelno == logging.ERROR for r in errors)


@pytest.mark.parametrize("kind", ["sqlite", "sqlite generic"])
def test_sqlite_owner_that_is_not_text_is_damage(tmp_path: Path, kind: str) -> None:
    backend = SQLAlchemyBackend.from_url(f"sqlite:///{tmp_path / 's.sqlite'}", user_index=True)
    try:
        if kind == "sqlite generic":
            statements = SQLiteStatements(backend.table, backend.engine.dialect, user_index=True)
            statements.merge = lambda *args: None  # type: ignore[method-assign]
            backend._sql = statements
        backend.create(key_of("a"), of("alice"))
        plant(backend, key_of("a"), "owner", b"alice")
        with pytest.raises(CorruptRecordError, match="owner of type bytes"):
            backend.load(key_of("a"))
        assert not backend.update(key_of("a"), Delta(NOW + HOUR, {"x": "1"}), NOW)
        assert backend.take(key_of("a"), NOW) is None
    finally:
        backend.close()


def test_rows_the_driver_cannot_convert_are_read_one_by_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = SQLAlchemyBackend.from_url(f"sqlite:///{tmp_path / 's.sqlite'}", user_index=True)
    # Timestamps read through SQLAlchemy's DateTime, which fails on text that is no date.
    backend._sql = Statements(backend.table, backend.engine.dialect, user_index=True)
    backend._runner.connections = None
    try:
        for name in ("good", "bad", "bob's"):
            backend.create(key_of(name), of("bob" if name == "bob's" else "alice"))
        plant(backend, key_of("bad"), "created_at", "garbage")
        with caplog.at_level(logging.ERROR, logger="flask_serversession"):
            assert listed(backend, "alice") == {key_of("good")}
        (error,) = [r for r in caplog.records if r.name == "flask_serversession"]
        assert key_of("bad") in error.getMessage()
    finally:
        backend.close()
