from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import subprocess
import sys
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
from flask import Flask
from flask import jsonify
from flask import session
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from werkzeug.serving import make_server

from flask_serversession import ServerSession
from flask_serversession.backends.base import CorruptRecordError
from flask_serversession.backends.base import data_size
from flask_serversession.backends.base import Delta
from flask_serversession.backends.base import Record
from flask_serversession.backends.sql.dialects import SQLiteStatements
from flask_serversession.backends.sql.statements import Statements
from flask_serversession.backends.sqlalchemy import SQLAlchemyBackend
from flask_serversession.errors import BackendError
from flask_serversession.errors import ConfigError
from flask_serversession.errors import SessionTooLargeError

from ..conftest import session_cookie
from ..conftest import store_of
from ..support.postgres import free_port
from ..support.postgres import make_postgres  # noqa: F401
from ..support.postgres import PostgresServer
from ..support.sql import build_sql_backend
from ..support.sql import dispose_fsa
from ..support.sql import drop_table
from ..support.sql import fsa_app
from ..support.sql import unique_table_name

NOW = datetime.now(timezone.utc).replace(microsecond=0)
HOUR = timedelta(hours=1)


def key_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def record(
    data: dict[str, str] | None = None,
    *,
    expires_in: timedelta = HOUR,
    values: t.Mapping[str, t.Any] | None = None,
) -> Record:
    return Record(dict(data or {}), NOW, NOW + expires_in, values)


def raw_rows(backend: SQLAlchemyBackend) -> list[t.Any]:
    with backend.engine.connect() as conn:
        return list(conn.execute(sa.select(backend.table).order_by(backend.table.c.key)).all())


def set_column(backend: SQLAlchemyBackend, key: str, column: str, value: t.Any) -> None:
    # Raw SQL, past the column type, to store what a broken writer might.
    table = backend.table.name
    with backend.engine.begin() as conn:
        conn.exec_driver_sql(
            f'UPDATE "{table}" SET "{column}" = {"?" if conn.dialect.name == "sqlite" else "%s"}'
            f' WHERE "key" = {"?" if conn.dialect.name == "sqlite" else "%s"}',
            (value, key),
        )


@pytest.fixture(params=["sqlite", "postgres"])
def sql_backend(request: pytest.FixtureRequest) -> SQLAlchemyBackend:
    return t.cast(SQLAlchemyBackend, request.getfixturevalue(f"{request.param}_backend"))


def test_table_shape(sql_backend: SQLAlchemyBackend) -> None:
    # Without the user index (SERVERSESSION_USER_KEY unset): the table of 0.1.
    backend = SQLAlchemyBackend(sql_backend.engine, table_name=unique_table_name())
    table = backend.table
    assert [c.name for c in table.columns] == ["key", "data", "created_at", "expires_at"]
    assert [c.name for c in table.primary_key] == ["key"]
    assert isinstance(table.c.key.type, sa.String) and table.c.key.type.length == 64
    assert isinstance(table.c.data.type, sa.Text)
    for name in ("created_at", "expires_at"):
        column_type = table.c[name].type
        assert isinstance(column_type, sa.DateTime) and column_type.timezone

    try:
        assert backend.count(NOW) == 0  # first use creates the table
        inspector = sa.inspect(backend.engine)
        columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert list(columns) == ["key", "data", "created_at", "expires_at"]
        assert not any(c["nullable"] for c in columns.values())
        assert inspector.get_pk_constraint(table.name)["constrained_columns"] == ["key"]
        indexes = inspector.get_indexes(table.name)
        assert [i["column_names"] for i in indexes] == [["expires_at"]]
    finally:
        drop_table(backend)


def test_table_created_lazily_once(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "sessions.sqlite"
    backend = SQLAlchemyBackend.from_url(f"sqlite:///{path}")
    try:
        assert path.parent.is_dir()
        assert not path.exists()
        creates: list[str] = []

        def count_create(*args: t.Any) -> None:
            if args[2].lstrip().upper().startswith("CREATE TABLE"):
                creates.append(args[2])

        sa.event.listen(backend.engine, "before_cursor_execute", count_create)
        threads = [threading.Thread(target=backend.count, args=(NOW,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        backend.load(key_of("a"))
        assert len(creates) == 1
        assert sa.inspect(backend.engine).has_table("serversession")
    finally:
        backend.close()


def test_existing_table_is_used(sqlite_backend: SQLAlchemyBackend) -> None:
    sqlite_backend.create(key_of("a"), record({"x": '"1"'}))
    again = SQLAlchemyBackend(sqlite_backend.engine)
    assert again.load(key_of("a")) == record({"x": '"1"'})


def test_datetimes_come_back_aware_utc(sql_backend: SQLAlchemyBackend) -> None:
    plus_two = timezone(timedelta(hours=2))
    created = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=plus_two)
    expires = created + timedelta(days=3)
    sql_backend.create(key_of("a"), Record({}, created, expires))

    loaded = sql_backend.load(key_of("a"))
    assert loaded is not None
    for value, sent in ((loaded.created_at, created), (loaded.expires_at, expires)):
        assert value == sent
        assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
        assert value.hour == sent.hour - 2
    [(_, item)] = sql_backend.items(created)
    assert item.expires_at.utcoffset() == timedelta(0)
    assert sql_backend.count(expires - timedelta(microseconds=1)) == 1
    assert sql_backend.count(expires) == 0


def test_update_is_atomic_under_contention(sql_backend: SQLAlchemyBackend) -> None:
    threads_n, updates_n = 8, 50
    key = key_of("shared")
    sql_backend.create(key, record({f"gone{n}": '"x"' for n in range(threads_n)}))
    barrier = threading.Barrier(threads_n)
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            barrier.wait()
            for i in range(updates_n):
                deleted = frozenset({f"gone{n}"}) if i == 0 else frozenset()
                delta = Delta(NOW + 2 * HOUR, {f"t{n}": f'"{i}"'}, deleted)
                assert sql_backend.update(key, delta, NOW)
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not failures
    loaded = sql_backend.load(key)
    assert loaded is not None
    assert loaded.data == {f"t{n}": f'"{updates_n - 1}"' for n in range(threads_n)}
    assert loaded.expires_at == NOW + 2 * HOUR


WORKER = """
import sys
from datetime import datetime, timedelta, timezone
from flask_serversession.backends.base import Delta
from flask_serversession.backends.sqlalchemy import SQLAlchemyBackend

url, key, name = sys.argv[1:]
backend = SQLAlchemyBackend.from_url(url)
now = datetime.now(timezone.utc)
for i in range(30):
    assert backend.update(key, Delta(now + timedelta(hours=1), {name: f'"{i}"'}), now)
backend.close()
"""


def test_sqlite_file_shared_by_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    backend = SQLAlchemyBackend.from_url(url)
    try:
        backend.create(key_of("a"), record())
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, url, key_of("a"), f"p{n}"],
                cwd=Path(__file__).parents[2],
            )
            for n in range(4)
        ]
        assert [w.wait(timeout=120) for w in workers] == [0] * 4
        loaded = backend.load(key_of("a"))
        assert loaded is not None
        assert loaded.data == {f"p{n}": '"29"' for n in range(4)}
    finally:
        backend.close()


def test_update_of_deleted_row_writes_nothing(sql_backend: SQLAlchemyBackend) -> None:
    key = key_of("a")
    sql_backend.create(key, record({"x": '"1"'}))
    sql_backend.delete(key)
    assert not sql_backend.update(key, Delta(NOW + HOUR, {"x": '"2"'}), NOW)
    assert not sql_backend.update(key, Delta(NOW + HOUR), NOW)
    assert not sql_backend.touch(key, NOW + HOUR, NOW)
    assert sql_backend.load(key) is None
    assert raw_rows(sql_backend) == []


def test_update_of_expired_row_writes_nothing(sql_backend: SQLAlchemyBackend) -> None:
    key = key_of("a")
    sql_backend.create(key, record({"x": '"1"'}, expires_in=timedelta(seconds=-1)))
    later = NOW + 2 * HOUR
    assert not sql_backend.update(key, Delta(later, {"x": '"2"'}, frozenset({"x"})), NOW)
    assert not sql_backend.touch(key, later, NOW)
    # Expiring exactly now counts as expired.
    sql_backend.create(key_of("b"), record({"x": '"1"'}, expires_in=timedelta(0)))
    assert not sql_backend.update(key_of("b"), Delta(later, {"x": '"2"'}), NOW)

    loaded = sql_backend.load(key)
    assert loaded == record({"x": '"1"'}, expires_in=timedelta(seconds=-1))


def test_update_without_data_changes_only_moves_expiry(sql_backend: SQLAlchemyBackend) -> None:
    key = key_of("a")
    sql_backend.create(key, record({"x": '"1"'}))
    assert sql_backend.update(key, Delta(NOW + 5 * HOUR), NOW)
    assert sql_backend.touch(key, NOW + 6 * HOUR, NOW)
    assert sql_backend.load(key) == Record({"x": '"1"'}, NOW, NOW + 6 * HOUR)


def test_create_replaces(sql_backend: SQLAlchemyBackend) -> None:
    key = key_of("a")
    sql_backend.create(key, record({"x": '"1"', "y": '"2"'}))
    sql_backend.create(key, Record({"z": '"3"'}, NOW + HOUR, NOW + 2 * HOUR))
    assert sql_backend.load(key) == Record({"z": '"3"'}, NOW + HOUR, NOW + 2 * HOUR)
    assert len(raw_rows(sql_backend)) == 1


def test_purge_deletes_in_batches(sql_backend: SQLAlchemyBackend) -> None:
    sql_backend.purge_batch_size = 7
    for n in range(30):
        sql_backend.create(key_of(f"old{n}"), record(expires_in=timedelta(minutes=-n - 1)))
    for n in range(5):
        sql_backend.create(key_of(f"live{n}"), record())
    deletes: list[str] = []

    def count_delete(*args: t.Any) -> None:
        if args[2].lstrip().upper().startswith("DELETE"):
            deletes.append(args[2])

    sa.event.listen(sql_backend.engine, "before_cursor_execute", count_delete)
    try:
        assert sql_backend.purge_expired(NOW) == 30
    finally:
        sa.event.remove(sql_backend.engine, "before_cursor_execute", count_delete)
    assert len(deletes) == 5  # 7 + 7 + 7 + 7 + 2
    assert sql_backend.count(NOW) == 5
    assert {k for k, _ in sql_backend.items(NOW)} == {key_of(f"live{n}") for n in range(5)}
    assert sql_backend.purge_expired(NOW) == 0


def test_purge_with_default_batch(sqlite_backend: SQLAlchemyBackend) -> None:
    sqlite_backend.count(NOW)
    rows = [
        {
            "key": key_of(f"old{n}"),
            "data": "{}",
            "created_at": NOW - HOUR,
            "expires_at": NOW - timedelta(seconds=n + 1),
        }
        for n in range(12_000)
    ]
    with sqlite_backend.engine.begin() as conn:
        conn.execute(sa.insert(sqlite_backend.table), rows)
    sqlite_backend.create(key_of("live"), record())
    assert sqlite_backend.purge_expired(NOW) == 12_000
    assert [k for k, _ in sqlite_backend.items(NOW)] == [key_of("live")]


def test_postgres_purge_skips_rows_another_transaction_holds(
    postgres_backend: SQLAlchemyBackend,
) -> None:
    # A purge never queues behind a request holding an expired row: it removes
    # the others at once, and a later purge removes that one.
    backend = postgres_backend
    backend.purge_batch_size = 3
    for n in range(10):
        backend.create(key_of(f"old{n}"), record(expires_in=timedelta(minutes=-n - 1)))
    backend.create(key_of("live"), record())
    held, c = key_of("old4"), backend.table.c
    removed: list[int] = []
    done = threading.Event()

    def purge() -> None:
        removed.append(backend.purge_expired(NOW))
        done.set()

    purger = threading.Thread(target=purge, name="test-purger", daemon=True)
    with backend.engine.connect() as holder, holder.begin():
        holder.execute(sa.select(c.key).where(c.key == held).with_for_update())
        purger.start()
        finished_while_held = done.wait(10)
    purger.join(10)
    assert finished_while_held, "the purge waited for the row another transaction held"
    assert removed == [9]
    assert [row.key for row in raw_rows(backend)] == sorted([held, key_of("live")])
    assert backend.purge_expired(NOW) == 1
    assert [row.key for row in raw_rows(backend)] == [key_of("live")]


def test_items_pages_through_all_rows(sql_backend: SQLAlchemyBackend) -> None:
    sql_backend.items_page_size = 3
    keys = {key_of(f"s{n}") for n in range(10)}
    for key in keys:
        sql_backend.create(key, record({"k": f'"{key}"'}))
    sql_backend.create(key_of("old"), record(expires_in=-HOUR))
    items = dict(sql_backend.items(NOW))
    assert items.keys() == keys
    assert all(r.data == {"k": f'"{k}"'} for k, r in items.items())
    assert sql_backend.clear() == 11
    assert list(sql_backend.items(NOW)) == []


def test_corrupt_data_raises_and_is_skipped(
    sql_backend: SQLAlchemyBackend, caplog: pytest.LogCaptureFixture
) -> None:
    sql_backend.create(key_of("good"), record({"x": '"1"'}))
    for name, data in [("text", "not json"), ("list", "[1]"), ("number", '{"x": 1}')]:
        sql_backend.create(key_of(name), record())
        set_column(sql_backend, key_of(name), "data", data)
        with pytest.raises(CorruptRecordError):
            sql_backend.load(key_of(name))

    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        assert [k for k, _ in sql_backend.items(NOW)] == [key_of("good")]
    assert len(caplog.records) == 3
    assert all(r.name == "flask_serversession" for r in caplog.records)
    assert sql_backend.count(NOW) == 4


def test_corrupt_timestamp_on_sqlite(
    sqlite_backend: SQLAlchemyBackend, caplog: pytest.LogCaptureFixture
) -> None:
    sqlite_backend.create(key_of("good"), record())
    sqlite_backend.create(key_of("bad"), record())
    set_column(sqlite_backend, key_of("bad"), "expires_at", "garbage")
    with pytest.raises(CorruptRecordError):
        sqlite_backend.load(key_of("bad"))
    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        assert [k for k, _ in sqlite_backend.items(NOW)] == [key_of("good")]
    assert len(caplog.records) == 1


def test_same_metadata_twice(sqlite_backend: SQLAlchemyBackend) -> None:
    metadata = sa.MetaData()
    first = SQLAlchemyBackend(sqlite_backend.engine, metadata=metadata)
    second = SQLAlchemyBackend(sqlite_backend.engine, metadata=metadata)
    assert first.table is second.table is metadata.tables["serversession"]
    first.create(key_of("a"), record())
    assert second.load(key_of("a")) == record()


def test_metadata_with_schema_used_twice() -> None:
    metadata = sa.MetaData(schema="sessions")
    engine = sa.create_engine("sqlite://")
    first = SQLAlchemyBackend(engine, metadata=metadata)
    second = SQLAlchemyBackend(engine, metadata=metadata)
    assert first.table is second.table is metadata.tables["sessions.serversession"]
    engine.dispose()


def test_metadata_with_other_table_of_that_name(sqlite_backend: SQLAlchemyBackend) -> None:
    metadata = sa.MetaData()
    sa.Table("serversession", metadata, sa.Column("id", sa.Integer, primary_key=True))
    with pytest.raises(ConfigError, match="already defined"):
        SQLAlchemyBackend(sqlite_backend.engine, metadata=metadata)


def test_two_apps_share_one_db(tmp_path: Path) -> None:
    db = SQLAlchemy()
    extra = [sa.Column("user_id", sa.Integer)]
    apps = [
        fsa_app(
            f"sqlite:///{tmp_path / f'app{n}.sqlite'}",
            tmp_path / f"instance{n}",
            db=db,
            SERVERSESSION_SQLALCHEMY_EXTRA_COLUMNS=extra,
        )[0]
        for n in range(2)
    ]
    backends = [build_sql_backend(app) for app in apps]
    try:
        assert backends[0].table is backends[1].table is db.metadata.tables["serversession"]
        assert backends[0].engine is not backends[1].engine
        backends[0].create(key_of("a"), record())
        assert backends[1].load(key_of("a")) is None
        assert backends[0].load(key_of("a")) == record()
    finally:
        for app in apps:
            dispose_fsa(app, db)


def test_two_apps_with_own_engines_share_config(tmp_path: Path) -> None:
    extra = [sa.Column("user_id", sa.Integer)]
    backends = []
    for n in range(2):
        app = Flask("tests", instance_path=str(tmp_path / f"instance{n}"))
        app.config["SERVERSESSION_SQLALCHEMY_EXTRA_COLUMNS"] = extra
        backends.append(build_sql_backend(app))
    try:
        assert backends[0].table is not backends[1].table
        assert extra[0].table is None  # the config's column was copied, not taken
        for backend in backends:
            backend.create(key_of("a"), record())
    finally:
        for backend in backends:
            backend.close()


def test_default_uri_is_sqlite_in_instance_folder_with_wal(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    app = Flask("tests", instance_path=str(instance))
    backend = build_sql_backend(app)
    try:
        assert instance.is_dir()
        assert backend.engine.url.get_backend_name() == "sqlite"
        assert Path(backend.engine.url.database or "") == instance / "serversession.sqlite"
        backend.create(key_of("a"), record())
        assert (instance / "serversession.sqlite").is_file()
        with backend.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    finally:
        backend.close()


def test_in_memory_sqlite_is_shared_across_threads() -> None:
    backend = SQLAlchemyBackend.from_url("sqlite://")
    try:
        backend.create(key_of("a"), record())
        found: list[Record | None] = []
        thread = threading.Thread(target=lambda: found.append(backend.load(key_of("a"))))
        thread.start()
        thread.join()
        assert found == [record()]
    finally:
        backend.close()


def test_bind_key_puts_table_in_bind_metadata(tmp_path: Path) -> None:
    app, db = fsa_app(
        f"sqlite:///{tmp_path / 'app.sqlite'}",
        tmp_path / "instance",
        SQLALCHEMY_BINDS={"sessions": f"sqlite:///{tmp_path / 'sessions.sqlite'}"},
        SERVERSESSION_SQLALCHEMY_BIND_KEY="sessions",
    )
    backend = build_sql_backend(app)
    try:
        with app.app_context():
            assert backend.engine is db.engines["sessions"]
            assert backend.table.metadata is db.metadatas["sessions"]
            assert "serversession" not in db.metadata.tables
            db.create_all(bind_key="sessions")
            assert sa.inspect(db.engines["sessions"]).has_table("serversession")
            assert not sa.inspect(db.engine).has_table("serversession")
    finally:
        dispose_fsa(app, db)


def _note_model(db: SQLAlchemy) -> t.Any:
    class Note(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = f"note_{unique_table_name()}"
        id: Mapped[int] = mapped_column(primary_key=True)
        text: Mapped[str]

    return Note


def _session_writes(backend: SQLAlchemyBackend) -> None:
    key = key_of("a")
    backend.create(key, record({"x": '"1"'}, values={"x": 1}))
    assert backend.update(key, Delta(NOW + HOUR, {"y": '"2"'}), NOW)
    assert backend.touch(key, NOW + 2 * HOUR, NOW)
    backend.purge_expired(NOW)


def test_app_db_session_untouched_sqlite(tmp_path: Path) -> None:
    app, db = fsa_app(f"sqlite:///{tmp_path / 'app.sqlite'}", tmp_path / "instance")
    note = _note_model(db)
    backend = build_sql_backend(app)
    try:
        with app.app_context():
            db.create_all()
            pending = note(text="pending")
            db.session.add(pending)
            transaction = db.session().get_transaction()
            _session_writes(backend)
            assert pending in db.session.new
            assert db.session().get_transaction() is transaction
            assert transaction is not None and transaction.is_active
            with db.engine.connect() as conn:
                assert conn.execute(sa.select(sa.func.count()).select_from(note)).scalar() == 0
            db.session.rollback()
            assert db.session.scalar(sa.select(sa.func.count()).select_from(note)) == 0
            assert backend.load(key_of("a")) is not None
    finally:
        dispose_fsa(app, db)


def test_app_db_session_untouched_postgres(postgres_url: str, tmp_path: Path) -> None:
    app, db = fsa_app(
        postgres_url, tmp_path / "instance", SERVERSESSION_SQLALCHEMY_TABLE=unique_table_name()
    )
    note = _note_model(db)
    backend = build_sql_backend(app)
    try:
        with app.app_context():
            db.create_all()
            # A flushed, uncommitted change: an open transaction on the app's connection.
            pending = note(text="pending")
            db.session.add(pending)
            db.session.flush()
            transaction = db.session().get_transaction()
            _session_writes(backend)
            assert db.session().get_transaction() is transaction
            assert transaction is not None and transaction.is_active
            assert pending in db.session and pending not in db.session.new
            with db.engine.connect() as conn:
                assert conn.execute(sa.select(sa.func.count()).select_from(note)).scalar() == 0
                assert conn.execute(sa.select(backend.table.c.key)).scalars().all() == [key_of("a")]
            db.session.rollback()
            assert db.session.scalar(sa.select(sa.func.count()).select_from(note)) == 0
            db.session.close()
            assert backend.load(key_of("a")) is not None
            db.drop_all()
    finally:
        drop_table(backend)
        dispose_fsa(app, db)


def test_extras_fill_extra_columns(sql_backend: SQLAlchemyBackend) -> None:
    calls: list[dict[str, t.Any]] = []

    def extras(values: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
        calls.append(dict(values))
        return {"user_id": values.get("user_id")}

    backend = SQLAlchemyBackend(
        sql_backend.engine,
        table_name=unique_table_name(),
        extra_columns=[sa.Column("user_id", sa.Integer, index=True)],
        extras=extras,
    )
    try:
        key = key_of("a")
        backend.create(key, record({"user_id": "5"}, values={"user_id": 5}))
        user_id = backend.table.c.user_id

        def stored_user() -> t.Any:
            with backend.engine.connect() as conn:
                return conn.execute(sa.select(user_id)).scalar_one()

        assert stored_user() == 5
        delta = Delta(NOW + HOUR, {"user_id": "7"}, values={"user_id": 7, "cart": []})
        assert backend.update(key, delta, NOW)
        assert stored_user() == 7
        assert backend.update(key, Delta(NOW + HOUR), NOW)  # no values: left alone
        assert backend.touch(key, NOW + 2 * HOUR, NOW)
        assert stored_user() == 7
        assert backend.update(key, Delta(NOW + HOUR, {}, frozenset({"user_id"}), {}), NOW)
        assert stored_user() is None
        assert calls == [{"user_id": 5}, {"user_id": 7, "cart": []}, {}]
        assert not backend.update(key_of("gone"), delta, NOW)
        with backend.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(backend.table)).scalar() == 1
    finally:
        drop_table(backend)


def test_extras_through_config(tmp_path: Path) -> None:
    app = Flask("tests", instance_path=str(tmp_path / "instance"))
    app.config.update(
        SERVERSESSION_SQLALCHEMY_EXTRA_COLUMNS=[sa.Column("user_id", sa.Integer)],
        SERVERSESSION_SQLALCHEMY_EXTRAS=lambda values: {"user_id": values.get("uid")},
    )
    backend = build_sql_backend(app)
    try:
        backend.create(key_of("a"), record(values={"uid": 3}))
        with backend.engine.connect() as conn:
            assert conn.execute(sa.select(backend.table.c.user_id)).scalar_one() == 3
    finally:
        backend.close()


def test_extras_returning_unknown_column(sqlite_backend: SQLAlchemyBackend) -> None:
    backend = SQLAlchemyBackend(
        sqlite_backend.engine,
        table_name="other",
        extra_columns=[sa.Column("user_id", sa.Integer)],
        extras=lambda values: {"userid": 1},
    )
    with pytest.raises(ValueError, match="userid"):
        backend.create(key_of("a"), record(values={}))
    assert backend.load(key_of("a")) is None


def test_database_down_raises_backend_error() -> None:
    url = f"postgresql+psycopg://user:s3cret@127.0.0.1:{free_port()}/db?connect_timeout=5"
    backend = SQLAlchemyBackend.from_url(url)  # contacts no server
    try:
        calls: list[t.Callable[[], object]] = [
            lambda: backend.load(key_of("a")),
            lambda: backend.create(key_of("a"), record()),
            lambda: backend.update(key_of("a"), Delta(NOW), NOW),
            lambda: backend.touch(key_of("a"), NOW, NOW),
            lambda: backend.delete(key_of("a")),
            lambda: backend.purge_expired(NOW),
            lambda: backend.count(NOW),
            lambda: list(backend.items(NOW)),
            backend.clear,
        ]
        for call in calls:
            with pytest.raises(BackendError) as info:
                call()
            assert isinstance(info.value.__cause__, sa.exc.SQLAlchemyError)
            assert "s3cret" not in str(info.value)
            assert info.value.code == 503
    finally:
        backend.close()


def test_server_stopped_midway_raises_backend_error(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite"
    backend = SQLAlchemyBackend.from_url(f"sqlite:///{path}")
    try:
        backend.create(key_of("a"), record())
        with backend.engine.begin() as conn:
            conn.exec_driver_sql('DROP TABLE "serversession"')
        with pytest.raises(BackendError, match="no such table"):
            backend.load(key_of("a"))
    finally:
        backend.close()


def test_init_app_contacts_no_server(tmp_path: Path) -> None:
    app = Flask("tests", instance_path=str(tmp_path / "instance"))
    app.config["SERVERSESSION_SQLALCHEMY_URI"] = (
        f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/db"
    )
    backend = build_sql_backend(app)
    try:
        assert t.cast(sa.QueuePool, backend.engine.pool).checkedout() == 0
        with pytest.raises(BackendError):
            backend.count(NOW)
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("SERVERSESSION_SQLALCHEMY", "not a db", "flask_sqlalchemy.SQLAlchemy"),
        ("SERVERSESSION_SQLALCHEMY_URI", "not a url", "database URL"),
        ("SERVERSESSION_SQLALCHEMY_URI", 42, "database URL"),
        ("SERVERSESSION_SQLALCHEMY_URI", "postgresql://u:s3cret@h:port/db", "database URL"),
        ("SERVERSESSION_SQLALCHEMY_URI", "nosuchdialect://host/db", "cannot be used"),
        ("SERVERSESSION_SQLALCHEMY_URI", "mysql+nosuchdriver://u:s3cret@h/db", "cannot be used"),
        ("SERVERSESSION_SQLALCHEMY_BIND_KEY", "sessions", "None when"),
        ("SERVERSESSION_SQLALCHEMY_TABLE", "", "non-empty string"),
        ("SERVERSESSION_SQLALCHEMY_TABLE", 5, "non-empty string"),
        ("SERVERSESSION_SQLALCHEMY_EXTRA_COLUMNS", "user_id", "sqlalchemy.Column"),
        ("SERVERSESSION_SQLALCHEMY_EXTRA_COLUMNS", ["user_id"], "sqlalchemy.Column"),
        ("SERVERSESSION_SQLALCHEMY_EXTRAS", "user_id", "function"),
    ],
)
def test_bad_config(tmp_path: Path, key: str, value: t.Any, message: str) -> None:
    app = Flask("tests", instance_path=str(tmp_path / "instance"))
    app.config[key] = value
    with pytest.raises(ConfigError, match=message) as info:
        build_sql_backend(app)
    assert key in str(info.value)
    assert "s3cret" not in str(info.value)
    if isinstance(value, str) and "s3cret" not in value and value:
        assert value in str(info.value)


def test_bad_bind_key(tmp_path: Path) -> None:
    app, db = fsa_app(f"sqlite:///{tmp_path / 'app.sqlite'}", tmp_path / "instance")
    try:
        app.config["SERVERSESSION_SQLALCHEMY_BIND_KEY"] = "nope"
        with pytest.raises(ConfigError, match=r"SERVERSESSION_SQLALCHEMY: .*'nope'"):
            build_sql_backend(app)
        app.config["SERVERSESSION_SQLALCHEMY_BIND_KEY"] = 3
        with pytest.raises(ConfigError, match="SERVERSESSION_SQLALCHEMY_BIND_KEY = 3"):
            build_sql_backend(app)
    finally:
        dispose_fsa(app, db)


def test_db_without_init_app(tmp_path: Path) -> None:
    app = Flask("tests", instance_path=str(tmp_path / "instance"))
    app.config["SERVERSESSION_SQLALCHEMY"] = SQLAlchemy()
    with pytest.raises(ConfigError, match=r"db\.init_app"):
        build_sql_backend(app)


def test_unwritable_sqlite_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    app = Flask("tests", instance_path=str(tmp_path / "instance"))
    app.config["SERVERSESSION_SQLALCHEMY_URI"] = f"sqlite:///{blocker / 'sub' / 'x.sqlite'}"
    with pytest.raises(ConfigError, match="SERVERSESSION_SQLALCHEMY_URI"):
        build_sql_backend(app)
    assert not os.path.exists(blocker / "sub")


# Take, the size limit, odd text, shared connections and restarts.


@pytest.fixture(params=["sqlite", "postgres", "fsa_sqlite", "fsa_postgres"])
def each_sql(request: pytest.FixtureRequest) -> SQLAlchemyBackend:
    backend = t.cast(SQLAlchemyBackend, request.getfixturevalue(f"{request.param}_backend"))
    backend.count(NOW)  # the table exists before statements are counted
    return backend


@pytest.fixture(params=["sqlite", "postgres"])
def generic_sql(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> SQLAlchemyBackend:
    """A backend as on databases without JSON functions or ``DELETE ... RETURNING``.

    Rows are still locked as the database does it (SQLite has no FOR UPDATE).
    """
    backend = t.cast(SQLAlchemyBackend, request.getfixturevalue(f"{request.param}_backend"))
    kind = SQLiteStatements if request.param == "sqlite" else Statements
    statements = kind(backend.table, backend.engine.dialect)
    statements.delete_returning = False
    monkeypatch.setattr(statements, "merge", lambda *args: None)
    backend._sql = statements
    backend._runner.statements.clear()
    backend._runner.direct = backend.engine  # such databases get no autocommit shortcut
    backend._runner.connections = None  # nor connections of the backend's own
    return backend


@contextmanager
def statements_run(backend: SQLAlchemyBackend) -> t.Iterator[list[str]]:
    """Collect the SQL statements ``backend`` sends inside the block."""
    seen: list[str] = []

    def note(conn: t.Any, cursor: t.Any, statement: str, *args: t.Any) -> None:
        seen.append(" ".join(statement.split()))

    sa.event.listen(backend.engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        sa.event.remove(backend.engine, "before_cursor_execute", note)


def together(*calls: t.Callable[[], object]) -> list[object]:
    """Run ``calls`` in threads released at one moment; each one's result or exception."""
    barrier = threading.Barrier(len(calls), timeout=10)
    results: list[object] = [None] * len(calls)

    def run(n: int) -> None:
        barrier.wait()
        try:
            results[n] = calls[n]()
        except Exception as e:
            results[n] = e

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
        assert not thread.is_alive()
    return results


def text_of(n: int, char: str = "x") -> str:
    return '"' + char * n + '"'


def test_take_returns_the_live_record_and_removes_it(each_sql: SQLAlchemyBackend) -> None:
    key = key_of("a")
    each_sql.create(key, record({"user": '"alice"', "ü": '"✓"'}))
    each_sql.create(key_of("other"), record({"user": '"bob"'}))
    with statements_run(each_sql) as seen:
        taken = each_sql.take(key, NOW)
    assert taken == record({"user": '"alice"', "ü": '"✓"'})
    assert len(seen) == 1 and seen[0].startswith("DELETE") and "RETURNING" in seen[0]
    assert each_sql.load(key) is None
    assert each_sql.take(key, NOW) is None
    assert each_sql.load(key_of("other")) is not None


def test_take_removes_an_expired_record_and_returns_none(sql_backend: SQLAlchemyBackend) -> None:
    sql_backend.create(key_of("old"), record({"x": '"1"'}, expires_in=-HOUR))
    sql_backend.create(key_of("now"), record({"x": '"1"'}, expires_in=timedelta(0)))
    assert sql_backend.take(key_of("old"), NOW) is None
    assert sql_backend.take(key_of("now"), NOW) is None
    assert raw_rows(sql_backend) == []


def test_take_and_save_at_once_lose_nothing(each_sql: SQLAlchemyBackend) -> None:
    key = key_of("a")
    for round_ in range(8):
        each_sql.create(key, record({"user": '"alice"'}))
        saved, taken = together(
            lambda n=round_: each_sql.update(key, Delta(NOW + HOUR, {"late": f'"{n}"'}), NOW),
            lambda: each_sql.take(key, NOW),
        )
        assert isinstance(taken, Record), taken
        # Either the save landed first and was taken along, or it found nothing.
        assert saved is ("late" in taken.data), (saved, taken)
        assert each_sql.load(key) is None


def test_only_one_of_concurrent_takes_gets_the_record(each_sql: SQLAlchemyBackend) -> None:
    key = key_of("a")
    for _round in range(5):
        each_sql.create(key, record({"user": '"alice"'}))
        taken = together(*[lambda: each_sql.take(key, NOW)] * 3)
        assert sorted(taken, key=lambda r: r is None) == [record({"user": '"alice"'}), None, None]


UNICODE_DATA = {
    "user": '"alice"',
    "ключ": '"значение"',
    "🎉 party": '"\\ud83c\\udf89"',
    "nul": '"a\\u0000b"',
    "\ufeff\uffff": '"☃ ✓ 中文"',
    "": '""',
}


def test_size_limit_counts_bytes_exactly_as_data_size(each_sql: SQLAlchemyBackend) -> None:
    key = key_of("a")
    delta_set = {"ü🎉": '"' + "✓" * 7 + '"', "ключ": '"короче"', "new": '"\\u0000\\\\u0000"'}
    deleted = frozenset({"user", "absent"})
    merged = {k: v for k, v in UNICODE_DATA.items() if k not in deleted} | delta_set
    size = data_size(merged)
    assert size > data_size(UNICODE_DATA)
    for limit, fits in ((size - 1, False), (size, True)):
        each_sql.create(key, record(UNICODE_DATA))
        delta = Delta(NOW + 2 * HOUR, delta_set, deleted, max_size=limit)
        if fits:
            assert each_sql.update(key, delta, NOW)
            assert each_sql.load(key) == Record(merged, NOW, NOW + 2 * HOUR)
        else:
            with pytest.raises(
                SessionTooLargeError, match=rf"would take {size} bytes.*\({limit}\)"
            ):
                each_sql.update(key, delta, NOW)
            assert each_sql.load(key) == record(UNICODE_DATA)


def test_size_limit_lets_a_session_over_it_shrink(each_sql: SQLAlchemyBackend) -> None:
    key = key_of("a")
    each_sql.create(key, record({"a": text_of(100), "b": text_of(100)}))
    assert each_sql.update(key, Delta(NOW + HOUR, {"b": text_of(50)}, max_size=10), NOW)
    assert each_sql.update(key, Delta(NOW + HOUR, {}, frozenset({"a"}), max_size=10), NOW)
    assert each_sql.update(key, Delta(NOW + HOUR, {"b": text_of(50, "y")}, max_size=10), NOW)
    with pytest.raises(SessionTooLargeError):
        each_sql.update(key, Delta(NOW + HOUR, {"b": text_of(51)}, max_size=10), NOW)
    loaded = each_sql.load(key)
    assert loaded is not None and loaded.data == {"b": text_of(50, "y")}


def test_a_save_that_fits_is_one_statement(each_sql: SQLAlchemyBackend) -> None:
    key = key_of("a")
    each_sql.create(key, record({"user": '"alice"'}))
    with statements_run(each_sql) as seen:
        delta = Delta(NOW + HOUR, {"cart": "[1,2]"}, frozenset({"user"}), max_size=1000)
        assert each_sql.update(key, delta, NOW)
    assert [s.split()[0] for s in seen] == ["UPDATE"]


def test_a_refused_save_reads_once_to_say_why(each_sql: SQLAlchemyBackend) -> None:
    key = key_of("a")
    each_sql.create(key, record({"user": '"alice"'}))
    too_big = Delta(NOW + HOUR, {"cart": text_of(100)}, max_size=50)
    with statements_run(each_sql) as seen, pytest.raises(SessionTooLargeError):
        each_sql.update(key, too_big, NOW)
    assert [s.split()[0] for s in seen] == ["UPDATE", "SELECT"]
    each_sql.delete(key)
    with statements_run(each_sql) as seen:
        assert not each_sql.update(key, too_big, NOW)
    assert [s.split()[0] for s in seen] == ["UPDATE", "SELECT"]


def test_two_writers_that_fit_alone_cannot_pass_max_size_together(
    each_sql: SQLAlchemyBackend,
) -> None:
    key = key_of("a")
    base = {"user": '"alice"'}
    limit = data_size(base) + 60
    deltas = [Delta(NOW + HOUR, {f"note{n}": text_of(40)}, max_size=limit) for n in (1, 2)]
    assert all(data_size(base | d.set) <= limit for d in deltas)
    for round_ in range(6):
        each_sql.create(key, record(base))
        outcomes = together(*(lambda d=d: each_sql.update(key, d, NOW) for d in deltas))
        assert True in outcomes, (round_, outcomes)
        assert [type(o) for o in outcomes if o is not True] == [SessionTooLargeError], outcomes
        loaded = each_sql.load(key)
        assert loaded is not None and len(loaded.data) == 2
        assert data_size(loaded.data) <= limit


def test_writers_queued_behind_a_row_lock_cannot_pass_max_size(
    postgres_backend: SQLAlchemyBackend,
) -> None:
    # Both saves wait for the same row lock, then PostgreSQL checks each
    # against the row as the other left it.
    backend, key = postgres_backend, key_of("a")
    base = {"user": '"alice"'}
    limit = data_size(base) + 60
    backend.create(key, record(base))
    deltas = [Delta(NOW + HOUR, {f"note{n}": text_of(40)}, max_size=limit) for n in (1, 2)]
    outcomes: list[object] = []
    with backend.engine.connect() as holder:
        holder.execute(sa.select(backend.table.c.key).with_for_update())
        threads = [
            threading.Thread(target=lambda d=d: outcomes.append(_outcome(backend, key, d)))
            for d in deltas
        ]
        for thread in threads:
            thread.start()
        _wait_for_lock_waiters(holder, 2)
        holder.commit()
        for thread in threads:
            thread.join(10)
            assert not thread.is_alive()
    assert sorted(map(repr, map(type, outcomes))) == sorted(
        [repr(bool), repr(SessionTooLargeError)]
    )
    loaded = backend.load(key)
    assert loaded is not None and data_size(loaded.data) <= limit


def _outcome(backend: SQLAlchemyBackend, key: str, delta: Delta) -> object:
    try:
        return backend.update(key, delta, NOW)
    except SessionTooLargeError as e:
        return e


def _wait_for_lock_waiters(conn: sa.Connection, n: int) -> None:
    waiting = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND datname = current_database()"
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with conn.engine.connect() as probe:
            if probe.execute(waiting).scalar_one() >= n:
                return
        time.sleep(0.02)
    raise AssertionError(f"{n} saves never waited for the row lock")


def test_generic_statements_merge_limit_and_take(generic_sql: SQLAlchemyBackend) -> None:
    key = key_of("a")
    generic_sql.create(key, record({"user": '"alice"', "drop": '"x"'}))
    delta = Delta(NOW + 2 * HOUR, {"cart": "[1]"}, frozenset({"drop"}), max_size=100)
    with statements_run(generic_sql) as seen:
        assert generic_sql.update(key, delta, NOW)
    assert any("FOR UPDATE" in s for s in seen) or generic_sql.engine.dialect.name == "sqlite"
    assert generic_sql.load(key) == Record({"user": '"alice"', "cart": "[1]"}, NOW, NOW + 2 * HOUR)
    with pytest.raises(SessionTooLargeError):
        generic_sql.update(key, Delta(NOW + HOUR, {"big": text_of(100)}, max_size=100), NOW)
    assert not generic_sql.update(key_of("gone"), delta, NOW)
    generic_sql.create(key_of("old"), record({"x": '"1"'}, expires_in=-HOUR))
    assert not generic_sql.update(key_of("old"), delta, NOW)
    assert generic_sql.take(key_of("old"), NOW) is None
    taken = generic_sql.take(key, NOW)
    assert taken is not None and taken.data == {"user": '"alice"', "cart": "[1]"}
    assert raw_rows(generic_sql) == []


def test_generic_statements_under_contention(generic_sql: SQLAlchemyBackend) -> None:
    key = key_of("a")
    base = {"user": '"alice"'}
    limit = data_size(base) + 60
    deltas = [Delta(NOW + HOUR, {f"note{n}": text_of(40)}, max_size=limit) for n in (1, 2)]
    for _round in range(4):
        generic_sql.create(key, record(base))
        outcomes = together(*(lambda d=d: generic_sql.update(key, d, NOW) for d in deltas))
        assert sorted(map(repr, map(type, outcomes))) == sorted(
            [repr(bool), repr(SessionTooLargeError)]
        )
    generic_sql.create(key, record({}))
    writes = together(
        *(
            lambda n=n: [
                generic_sql.update(key, Delta(NOW + HOUR, {f"t{n}": f'"{i}"'}), NOW)
                for i in range(10)
            ]
            for n in range(4)
        )
    )
    assert writes == [[True] * 10] * 4
    loaded = generic_sql.load(key)
    assert loaded is not None and loaded.data == {f"t{n}": '"9"' for n in range(4)}


# Text that SQL JSON functions read differently from Python: NUL, lone surrogates.

ODD_DATA = {
    "user": '"alice"',
    "a\x00b": '"a NUL in the key, as older versions stored it"',
    "raw": '"a raw NUL \x00 in the text"',
    "lone": '"\ud800"',
    "emoji": '"\U0001f600"',
}


def test_nul_and_lone_surrogates_round_trip_and_stay_writable(each_sql: SQLAlchemyBackend) -> None:
    key = key_of("a")
    each_sql.create(key, record(ODD_DATA))
    assert each_sql.load(key) == record(ODD_DATA)
    assert each_sql.update(key, Delta(NOW + HOUR, {"after": '"1"'}), NOW)
    delta = Delta(NOW + HOUR, {"new\x00": '"\x00"', "\udfff": '"x"'}, frozenset({"a\x00b"}))
    assert each_sql.update(key, delta, NOW)
    expected = {k: v for k, v in ODD_DATA.items() if k != "a\x00b"}
    expected |= {"after": '"1"', "new\x00": '"\x00"', "\udfff": '"x"'}
    loaded = each_sql.load(key)
    assert loaded is not None and loaded.data == expected
    taken = each_sql.take(key, NOW)
    assert taken is not None and taken.data == expected


def test_nul_in_stored_data_is_measured_exactly(each_sql: SQLAlchemyBackend) -> None:
    key = key_of("a")
    stored = {"a\x00b": text_of(10), "v": '"a\\u0000b"', "raw": '"\x00\x00"'}
    delta_set = {"more": text_of(20)}
    size = data_size(stored | delta_set)
    each_sql.create(key, record(stored))
    with pytest.raises(SessionTooLargeError, match=f"would take {size} bytes"):
        each_sql.update(key, Delta(NOW + HOUR, delta_set, max_size=size - 1), NOW)
    assert each_sql.update(key, Delta(NOW + HOUR, delta_set, max_size=size), NOW)
    loaded = each_sql.load(key)
    assert loaded is not None and loaded.data == stored | delta_set


@pytest.fixture(params=["sqlite", "postgres"])
def odd_text_app(request: pytest.FixtureRequest, make_app: t.Callable[..., Flask]) -> Flask:
    backend = request.getfixturevalue(f"{request.param}_backend")
    app = make_app(backend)

    @app.get("/dump-exact")
    def dump_exact() -> t.Any:
        return jsonify({k: [type(v).__name__, repr(v)] for k, v in session.items()})

    return app


ODD_VALUES: dict[str, t.Any] = {
    "nul": "a\x00b",
    "only_nul": "\x00",
    "escape_lookalike": "\\u0000 \\ud800",
    "emoji": "\U0001f600",
    "rtl_and_bom": "\u202e\ufeff",
    "nested": {"\x00": ["\x00", {"k": "\u2028"}]},
    "max": "\U0010ffff",
}


def test_nul_and_odd_unicode_values_through_the_app(odd_text_app: Flask) -> None:
    client = odd_text_app.test_client()
    assert client.post("/set", json=ODD_VALUES).status_code == 200
    assert client.post("/set", json={"after": 1}).status_code == 200
    assert client.post("/delete/nul").status_code == 200
    assert client.post("/set", json={"nul": "again\x00"}).status_code == 200
    expected = ODD_VALUES | {"after": 1, "nul": "again\x00"}
    assert client.get("/dump-exact").json == {
        k: [type(v).__name__, repr(v)] for k, v in expected.items()
    }
    client.post("/regenerate")
    assert client.post("/set", json={"later": True}).status_code == 200
    assert client.get("/dump").json == expected | {"later": True}


def test_a_stored_nul_key_keeps_the_session_writable(odd_text_app: Flask) -> None:
    client = odd_text_app.test_client()
    client.post("/set", json={"user": "alice"})
    with odd_text_app.app_context():
        store = store_of(odd_text_app)
        key = store.storage_key(t.cast(str, store.sid_from(session_cookie(client))))
        stored = store.backend.load(key)
        assert stored is not None
        # As earlier versions stored a NUL key, before keys were checked.
        data = {**stored.data, "k\x00": '"v"'}
        store.backend.create(key, Record(data, stored.created_at, stored.expires_at))
    assert client.post("/set", json={"theme": "dark"}).status_code == 200
    assert client.get("/dump").json == {"user": "alice", "k\x00": "v", "theme": "dark"}


# An in-memory database shares one connection between all threads.


def test_in_memory_sqlite_under_a_threaded_server(make_app: t.Callable[..., Flask]) -> None:
    app = make_app("sqlalchemy", SERVERSESSION_SQLALCHEMY_URI="sqlite://")
    server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    clients, writes = 8, 12
    try:

        def client(n: int) -> list[int]:
            statuses, cookie = [], ""
            for i in range(writes):
                conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
                try:
                    headers = {"Content-Type": "application/json", "Cookie": cookie}
                    conn.request("POST", "/set", json.dumps({f"k{i}": n}), headers)
                    response = conn.getresponse()
                    response.read()
                finally:
                    conn.close()
                statuses.append(response.status)
                cookie = (response.getheader("Set-Cookie") or cookie).split(";")[0]
            return statuses

        results = together(*(lambda n=n: client(n) for n in range(clients)))
    finally:
        server.shutdown()
        serving.join(10)
        server.server_close()
    assert results == [[200] * writes] * clients
    with app.app_context():
        sessions = [data for _key, data in store_of(app).items()]
    expected = [{f"k{i}": n for i in range(writes)} for n in range(clients)]
    assert sorted(sessions, key=lambda data: data["k0"]) == expected
    store_of(app).backend.close()


# A database restart while the app is idle.


@pytest.fixture(params=["own engine", "Flask-SQLAlchemy"])
def restart_app(
    request: pytest.FixtureRequest, make_app: t.Callable[..., Flask]
) -> t.Iterator[tuple[Flask, PostgresServer]]:
    # Durable: an immediate stop must keep what was committed, as in production.
    server = request.getfixturevalue("make_postgres")(durable=True)
    if request.param == "own engine":
        app = make_app("sqlalchemy", SERVERSESSION_SQLALCHEMY_URI=server.url)
        yield app, server
        store_of(app).backend.close()
        return
    db = SQLAlchemy()
    app = make_app("memory", SQLALCHEMY_DATABASE_URI=server.url)
    db.init_app(app)
    app.config.update(SERVERSESSION_BACKEND="sqlalchemy", SERVERSESSION_SQLALCHEMY=db)
    app.extensions.pop("serversession")
    ServerSession(app)
    yield app, server
    dispose_fsa(app, db)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_while_idle_is_invisible(
    restart_app: tuple[Flask, PostgresServer], mode: t.Literal["fast", "immediate"]
) -> None:
    app, server = restart_app
    clients = [app.test_client() for _ in range(3)]
    for n, client in enumerate(clients):
        assert client.post("/set", json={"user": n}).status_code == 200
    # Idle connections in the pool, as several workers' requests leave them.
    engine = store_of(app).backend.engine
    with engine.connect(), engine.connect(), engine.connect():
        pass
    assert t.cast(sa.QueuePool, engine.pool).checkedin() >= 3
    server.restart(mode)
    for n, client in enumerate(clients):
        response = client.get("/dump")
        assert response.status_code == 200, response.data
        assert response.json == {"user": n}
    server.restart(mode)
    assert clients[0].post("/set", json={"after": "restart"}).status_code == 200
    assert clients[0].get("/dump").json == {"user": 0, "after": "restart"}


@pytest.mark.parametrize("restart_app", ["own engine"], indirect=True)
def test_database_down_still_answers_503(restart_app: tuple[Flask, PostgresServer]) -> None:
    app, server = restart_app
    client = app.test_client()
    assert client.post("/set", json={"user": "alice"}).status_code == 200
    server.stop()
    assert client.get("/dump").status_code == 503
    server.start()
    assert client.get("/dump").json == {"user": "alice"}
