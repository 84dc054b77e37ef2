"""A session table made by an older release, or before a feature was turned on.

The backend's own table (built from a URL) gets what it lacks at first use,
also when several processes start at once; a table in the app's database is
the app's to migrate, and ``check`` and first use say how.
"""

from __future__ import annotations

import multiprocessing
import re
import threading
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_serversession import BackendError
from flask_serversession import ConfigError
from flask_serversession import ServerSession
from flask_serversession.backends.base import Record
from flask_serversession.backends.sql import schema
from flask_serversession.backends.sqlalchemy import SQLAlchemyBackend

from ..support.sql import dispose_fsa
from ..support.sql import fsa_app
from ..support.sql import unique_table_name

NOW = datetime.now(timezone.utc).replace(microsecond=0)
HOUR = timedelta(hours=1)
#: Processes and threads that start on one old table at once.
STARTERS = 4


def record(user: str | None = None) -> Record:
    return Record({"n": "1"}, NOW, NOW + HOUR, user=user)


def key_of(n: int) -> str:
    return f"{n:064x}"


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sessions.sqlite'}"
    return t.cast(str, request.getfixturevalue("postgres_url"))


@pytest.fixture
def table_name(url: str) -> t.Iterator[str]:
    name = unique_table_name()
    yield name
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))
    engine.dispose()


def old_table(url: str, name: str) -> None:
    """Make the table as a release before the user index did, with one session in it."""
    old = SQLAlchemyBackend.from_url(url, table_name=name)
    old.create(key_of(1), record())
    old.close()


def columns_and_indexes(url: str, name: str) -> tuple[list[str], list[list[str]]]:
    engine = sa.create_engine(url)
    inspector = sa.inspect(engine)
    columns = [c["name"] for c in inspector.get_columns(name)]
    indexes = sorted(t.cast(list[str], i["column_names"]) for i in inspector.get_indexes(name))
    engine.dispose()
    return columns, indexes


def test_own_table_gets_the_owner_column_at_first_use(url: str, table_name: str) -> None:
    old_table(url, table_name)
    backend = SQLAlchemyBackend.from_url(url, table_name=table_name, user_index=True)
    try:
        assert backend.load(key_of(1)) == record()
        backend.create(key_of(2), record("alice"))
        assert [key for key, _ in backend.user_records("alice", NOW)] == [key_of(2)]
    finally:
        backend.close()
    columns, indexes = columns_and_indexes(url, table_name)
    assert columns == ["key", "data", "created_at", "expires_at", "owner"]
    assert indexes == [["expires_at"], ["owner"]]


def test_own_table_gets_a_new_extra_column(url: str, table_name: str) -> None:
    old_table(url, table_name)
    backend = SQLAlchemyBackend.from_url(
        url,
        table_name=table_name,
        extra_columns=[sa.Column("user_id", sa.Integer, nullable=True)],
        extras=lambda data: {"user_id": 7},
    )
    try:
        backend.create(key_of(2), Record({"n": "1"}, NOW, NOW + HOUR, values={"n": 1}))
        with backend.engine.connect() as conn:
            query = sa.select(backend.table.c.user_id).where(backend.table.c.key == key_of(2))
            assert conn.execute(query).scalar_one() == 7
    finally:
        backend.close()


def start_on_old_table(url: str, name: str, barrier: t.Any, n: int) -> None:
    """Start a backend on the old table once every starter has seen what it lacks."""
    seen = schema.gaps

    def gaps_then_wait(engine: sa.Engine, table: sa.Table) -> schema.Gaps:
        found = seen(engine, table)
        barrier.wait(timeout=60)  # every starter now adds the same column at once
        return found

    schema.gaps = gaps_then_wait  # type: ignore[assignment]
    backend = SQLAlchemyBackend.from_url(url, table_name=name, user_index=True)
    try:
        backend.create(key_of(100 + n), record(f"user{n}"))
    finally:
        backend.close()
        schema.gaps = seen  # type: ignore[assignment]


def test_processes_starting_at_once_upgrade_the_table_once(url: str, table_name: str) -> None:
    old_table(url, table_name)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(STARTERS)
    processes = [
        context.Process(target=start_on_old_table, args=(url, table_name, barrier, n))
        for n in range(STARTERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * STARTERS
    columns, indexes = columns_and_indexes(url, table_name)
    assert columns.count("owner") == 1 and indexes == [["expires_at"], ["owner"]]
    backend = SQLAlchemyBackend.from_url(url, table_name=table_name, user_index=True)
    try:
        for n in range(STARTERS):
            assert [k for k, _ in backend.user_records(f"user{n}", NOW)] == [key_of(100 + n)]
    finally:
        backend.close()


def test_threads_starting_at_once_upgrade_the_table_once(
    url: str, table_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_table(url, table_name)
    barrier = threading.Barrier(STARTERS)
    seen = schema.gaps

    def gaps_then_wait(engine: sa.Engine, table: sa.Table) -> schema.Gaps:
        found = seen(engine, table)
        if found.columns:
            barrier.wait(timeout=60)
        return found

    monkeypatch.setattr(schema, "gaps", gaps_then_wait)
    errors: list[BaseException] = []

    def start(n: int) -> None:
        backend = SQLAlchemyBackend.from_url(url, table_name=table_name, user_index=True)
        try:
            backend.create(key_of(100 + n), record(f"user{n}"))
        except BaseException as e:
            errors.append(e)
        finally:
            backend.close()

    threads = [threading.Thread(target=start, args=(n,)) for n in range(STARTERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert columns_and_indexes(url, table_name)[1] == [["expires_at"], ["owner"]]


# A table in the app's own database (Flask-SQLAlchemy).


def check_output(app: Flask) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(
        args=["serversession", "check", "--ignore", "serversession.E001"]
    )
    return result.exit_code, result.output


def test_apps_table_without_owner_is_reported_and_refused(
    url: str, table_name: str, tmp_path: Path
) -> None:
    old_table(url, table_name)
    app, db = fsa_app(
        url,
        tmp_path / "instance",
        SECRET_KEY="k" * 64,
        SERVERSESSION_SQLALCHEMY_TABLE=table_name,
        SERVERSESSION_USER_KEY="_user_id",
    )
    try:
        ServerSession(app)
        code, output = check_output(app)
        assert code == 1
        [line] = [line for line in output.splitlines() if "E019" in line]
        assert line.startswith(
            f"error serversession.E019 session table {table_name!r}: It has no column 'owner',"
            " which SERVERSESSION_USER_KEY needs for its user index: every request"
        )
        assert "'flask db migrate' then 'flask db upgrade'" in line
        statements = re.findall(r"((?:ALTER|CREATE) [^;]*);", line)
        assert [s.split(" (")[0].split(" ON ")[0] for s in statements] == [
            f"ALTER TABLE {table_name} ADD COLUMN owner TEXT",
            f"CREATE INDEX{' CONCURRENTLY' if url.startswith('postgres') else ''}"
            f" ix_{table_name}_owner",
        ]
        with app.app_context(), pytest.raises(ConfigError) as raised:
            ServerSession().count()
        message = str(raised.value)
        assert message.startswith(
            f"The session table {table_name!r} has no column 'owner', which"
            " SERVERSESSION_USER_KEY needs for its user index. The table is in the app's own"
        )
        assert "flask db migrate" in message
        assert re.findall(r"^    (.*);$", message, re.MULTILINE) == statements
        assert "owner" not in columns_and_indexes(url, table_name)[0]  # nothing altered

        # The app runs the statements (as its migration would): check passes, sessions work.
        migrating = sa.create_engine(url)
        with migrating.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
        migrating.dispose()
        assert "E019" not in check_output(app)[1]
        with app.app_context():
            assert ServerSession().count() == 1
    finally:
        dispose_fsa(app, db)


def quickstart_app(instance: Path, **config: t.Any) -> Flask:
    app = Flask("quickstart", instance_path=str(instance))
    app.config.update(SECRET_KEY="k" * 64, **config)
    ServerSession(app)

    @app.post("/sign-in")
    def sign_in() -> str:
        from flask import session

        session["_user_id"] = "alice"
        return "ok"

    return app


def test_turning_on_the_user_index_over_the_quickstart_table(tmp_path: Path) -> None:
    before = quickstart_app(tmp_path / "instance")
    client = before.test_client()
    assert client.post("/sign-in").status_code == 200
    after = quickstart_app(tmp_path / "instance", SERVERSESSION_USER_KEY="_user_id")
    client = after.test_client()
    assert client.post("/sign-in").status_code == 200
    with after.app_context():
        assert len(ServerSession().user_sessions("alice")) == 1
    assert "E019" not in check_output(after)[1]
    for app in (before, after):
        app.extensions["serversession"].backend.close()


def test_the_default_sqlite_file_is_private(tmp_path: Path) -> None:
    app = quickstart_app(tmp_path / "instance")
    assert app.test_client().post("/sign-in").status_code == 200
    app.extensions["serversession"].backend.close()
    files = sorted((tmp_path / "instance").glob("serversession.sqlite*"))
    assert files and files[0].name == "serversession.sqlite"
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_a_column_that_cannot_be_added_is_a_backend_error(url: str, table_name: str) -> None:
    old_table(url, table_name)
    required = sa.Column("tenant", sa.Integer, nullable=False)
    backend = SQLAlchemyBackend.from_url(url, table_name=table_name, extra_columns=[required])
    try:
        with pytest.raises(BackendError) as raised:
            backend.load(key_of(1))
        message = str(raised.value)
        assert message.startswith(f"Could not set up the session table in table {table_name!r}")
        assert "tenant" in message.lower() or "not null" in message.lower()
    finally:
        backend.close()
    assert "tenant" not in columns_and_indexes(url, table_name)[0]
