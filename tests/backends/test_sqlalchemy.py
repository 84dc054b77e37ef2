from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import threading
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from flask_serversession.backends.base import CorruptRecordError
from flask_serversession.backends.base import Delta
from flask_serversession.backends.base import Record
from flask_serversession.backends.sqlalchemy import SQLAlchemyBackend
from flask_serversession.errors import BackendError
from flask_serversession.errors import ConfigError

from ..support.postgres import free_port
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
    table = sql_backend.table
    assert [c.name for c in table.columns] == ["key", "data", "created_at", "expires_at"]
    assert [c.name for c in table.primary_key] == ["key"]
    assert isinstance(table.c.key.type, sa.String) and table.c.key.type.length == 64
    assert isinstance(table.c.data.type, sa.Text)
    for name in ("created_at", "expires_at"):
        column_type = table.c[name].type
        assert isinstance(column_type, sa.DateTime) and column_type.timezone

    assert sql_backend.count(NOW) == 0  # first use creates the table
    inspector = sa.inspect(sql_backend.engine)
    columns = {c["name"]: c for c in inspector.get_columns(table.name)}
    assert list(columns) == ["key", "data", "created_at", "expires_at"]
    assert not any(c["nullable"] for c in columns.values())
    assert inspector.get_pk_constraint(table.name)["constrained_columns"] == ["key"]
    indexes = inspector.get_indexes(table.name)
    assert [i["column_names"] for i in indexes] == [["expires_at"]]


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
