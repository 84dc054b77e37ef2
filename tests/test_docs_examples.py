"""The code examples of the docs, run on real apps; each test names its page."""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import sqlite3
import stat
import threading
import typing as t
from dataclasses import replace
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest
import sqlalchemy as sa
from flask import Flask
from flask import jsonify
from flask import redirect
from flask import request
from flask import session
from flask import url_for
from flask.testing import FlaskClient

from flask_serversession import Backend
from flask_serversession import ConfigError
from flask_serversession import ServerSession
from flask_serversession import SessionExpiredError
from flask_serversession import SessionNotFoundError
from flask_serversession import SessionTooLargeError
from flask_serversession.backends import Delta
from flask_serversession.backends import Record
from flask_serversession.backends.base import check_size
from flask_serversession.backends.base import data_size
from flask_serversession.backends.base import expected
from flask_serversession.backends.filesystem import FileSystemBackend
from flask_serversession.backends.memory import MemoryBackend
from flask_serversession.backends.sql import make_table
from flask_serversession.backends.sql import SQLAlchemyBackend
from flask_serversession.store import SessionStore

TOKEN = re.compile(r"[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}")
# A Monday in the future, so the test client keeps the cookies it is sent.
MONDAY_0900 = datetime(2032, 1, 5, 9, 0, tzinfo=timezone.utc)


class Clock:
    """A hand-moved clock for a store."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def new_app(tmp_path: t.Any, **config: t.Any) -> Flask:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config["SECRET_KEY"] = "change me"
    app.config.update(config)
    return app


def store_of(app: Flask) -> SessionStore:
    return t.cast(SessionStore, app.extensions["serversession"])


def token_of(client: FlaskClient, name: str = "session") -> str:
    cookie = client.get_cookie(name)
    assert cookie is not None
    return cookie.value


def close(app: Flask) -> None:
    store_of(app).backend.close()


# index.rst, README.md


def test_index_visit_counter_uses_sqlite_in_instance_folder(tmp_path: t.Any) -> None:
    app = new_app(tmp_path)
    ServerSession(app)

    @app.route("/")
    def index() -> str:
        session["visits"] = session.get("visits", 0) + 1
        return f"Visit number {session['visits']}"

    client = app.test_client()
    assert client.get("/").text == "Visit number 1"
    assert client.get("/").text == "Visit number 2"
    assert TOKEN.fullmatch(token_of(client))
    assert os.path.exists(os.path.join(app.instance_path, "serversession.sqlite"))
    close(app)


# quickstart.rst


def test_quickstart_factory_serves_several_apps(tmp_path: t.Any) -> None:
    server_session = ServerSession()

    def create_app() -> Flask:
        app = Flask(__name__, instance_path=str(tmp_path / "instance"))
        app.config["SECRET_KEY"] = "change me"
        app.config["SERVERSESSION_BACKEND"] = "memory"
        server_session.init_app(app)
        return app

    first, second = create_app(), create_app()
    assert store_of(first) is not store_of(second)
    with first.app_context():
        token = server_session.create({"n": 1})
    with second.app_context(), pytest.raises(SessionNotFoundError):
        server_session.get(token)


def test_quickstart_secret_key_is_read_per_request(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SECRET_KEY=None, SERVERSESSION_BACKEND="memory", TESTING=True)
    ServerSession(app)

    @app.post("/write")
    def write() -> str:
        session["a"] = 1
        return "written"

    @app.get("/read")
    def read() -> str:
        return repr(session.get("a"))

    client = app.test_client()
    assert client.get("/read").text == "None"
    with pytest.raises(RuntimeError, match="secret key"):
        client.post("/write")
    app.config["SECRET_KEY"] = "change me"
    assert client.post("/write").status_code == 200
    assert client.get("/read").text == "1"


def test_quickstart_cart_append_is_saved(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    ServerSession(app)

    @app.post("/cart")
    def add_to_cart() -> t.Any:
        session.setdefault("cart", []).append(request.form["item"])
        return {"cart": session["cart"]}

    @app.get("/untouched")
    def untouched() -> str:
        return "no session here"

    client = app.test_client()
    response = client.get("/untouched")
    assert "Set-Cookie" not in response.headers
    assert store_of(app).count() == 0
    client.post("/cart", data={"item": "apple"})
    assert client.post("/cart", data={"item": "pear"}).json == {"cart": ["apple", "pear"]}


def add_auth_views(app: Flask) -> None:
    """The sign-in and sign-out views of quickstart.rst and security.rst."""

    class User:
        id = 7

    def check_password(username: str, password: str) -> User:
        assert password == "secret"
        return User()

    @app.get("/")
    def index() -> t.Any:
        return {"user_id": session.get("user_id")}

    @app.post("/login")
    def login() -> t.Any:
        user = check_password(request.form["username"], request.form["password"])
        session.regenerate()
        session["user_id"] = user.id
        return redirect(url_for("index"))

    @app.post("/logout")
    def logout() -> t.Any:
        session.destroy()
        return redirect(url_for("index"))

    @app.post("/plant")
    def plant() -> str:
        session["planted"] = True
        return "planted"


def test_quickstart_regenerate_on_login_and_destroy_on_logout(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    ServerSession(app)
    add_auth_views(app)
    client = app.test_client()

    client.post("/plant")
    planted = token_of(client)
    client.post("/login", data={"username": "alice", "password": "secret"})
    signed_in = token_of(client)
    assert signed_in != planted
    with app.app_context():
        assert store_of(app).get(signed_in) == {"planted": True, "user_id": 7}
        with pytest.raises(SessionNotFoundError):
            store_of(app).get(planted)

    client.post("/logout")
    assert client.get_cookie("session") is None
    assert store_of(app).count() == 0

    attacker = app.test_client()
    attacker.set_cookie("session", signed_in)
    assert attacker.get("/").json == {"user_id": None}


def test_quickstart_switch_to_redis_contacts_no_server(tmp_path: t.Any) -> None:
    from flask_serversession.backends.redis import RedisBackend

    app = new_app(tmp_path)
    app.config["SERVERSESSION_BACKEND"] = "redis"
    app.config["SERVERSESSION_REDIS_URL"] = "redis://localhost:6379/0"
    ServerSession(app)
    assert isinstance(store_of(app).backend, RedisBackend)
    close(app)


def test_quickstart_programmatic_api(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    server_session = ServerSession(app)

    with app.app_context():
        token = server_session.create({"user_id": 123})
        assert server_session.get(token) == {"user_id": 123}
        server_session.update(token, {"user_id": 1337})
        assert server_session.get(token) == {"user_id": 1337}
        server_session.delete(token)
        with pytest.raises(SessionNotFoundError):
            server_session.get(token)
        with pytest.raises(SessionNotFoundError):
            server_session.get("not a token")

        clock = Clock(datetime.now(timezone.utc))
        store_of(app).clock = clock
        token = server_session.create({"user_id": 1})
        clock.now += timedelta(days=2)
        with pytest.raises(SessionExpiredError):
            server_session.get(token)


# configuration.rst


CONFIG_EXAMPLES: dict[str, t.Any] = {
    "SERVERSESSION_EXPIRE_TIME": timedelta(hours=8),
    "SERVERSESSION_RENEW_TIME": 30 * 60,
    "SERVERSESSION_RENEW_ON": "access",
    "SERVERSESSION_ABSOLUTE_LIFETIME": timedelta(days=7),
    "SERVERSESSION_PERMANENT": True,
    "SERVERSESSION_SIGN_ID": False,
    "SERVERSESSION_HEADER_NAME": "X-Session-Token",
    "SERVERSESSION_MAX_SIZE": 64 * 1024,
    "SERVERSESSION_PURGE_EVERY": 1000,
    "SERVERSESSION_MEMORY_MAX_ENTRIES": 1000,
}


@pytest.mark.parametrize(("key", "value"), CONFIG_EXAMPLES.items())
def test_configuration_examples_are_accepted(tmp_path: t.Any, key: str, value: t.Any) -> None:
    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    app.config[key] = value
    ServerSession(app)


def test_configuration_flask_lifetime_is_followed(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    app.config["PERMANENT_SESSION_LIFETIME"] = timedelta(minutes=30)
    ServerSession(app)
    assert store_of(app).settings.expire_time == timedelta(minutes=30)


def test_configuration_backend_examples(tmp_path: t.Any) -> None:
    import redis

    from flask_serversession.backends.redis import RedisBackend

    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    ServerSession(app)
    assert isinstance(store_of(app).backend, MemoryBackend)

    app = new_app(tmp_path, SERVERSESSION_BACKEND="redis")
    app.config["SERVERSESSION_KEY_PREFIX"] = "shop:session:"
    app.config["SERVERSESSION_REDIS"] = redis.Redis(host="cache", port=6379)
    ServerSession(app)
    backend = store_of(app).backend
    assert isinstance(backend, RedisBackend) and backend.key_prefix == "shop:session:"
    backend.client.close()

    app = new_app(tmp_path, SERVERSESSION_BACKEND="redis")
    app.config["SERVERSESSION_REDIS_URL"] = "rediss://:password@cache:6380/2"
    ServerSession(app)
    close(app)

    app = new_app(tmp_path, SERVERSESSION_BACKEND="filesystem")
    app.config["SERVERSESSION_FILE_DIR"] = str(tmp_path / "var-lib-myapp" / "sessions")
    ServerSession(app)
    assert isinstance(store_of(app).backend, FileSystemBackend)

    app = new_app(tmp_path)
    app.config["SERVERSESSION_SQLALCHEMY_URI"] = "postgresql+psycopg://app@db/app"
    app.config["SERVERSESSION_SQLALCHEMY_TABLE"] = "web_sessions"
    ServerSession(app)
    backend = store_of(app).backend
    assert isinstance(backend, SQLAlchemyBackend)
    assert backend.engine.dialect.name == "postgresql"
    assert backend.table.name == "web_sessions"
    close(app)


def test_configuration_from_prefixed_env(tmp_path: t.Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_SERVERSESSION_BACKEND", "memory")
    monkeypatch.setenv("FLASK_SERVERSESSION_EXPIRE_TIME", "3600")
    app = new_app(tmp_path)
    app.config.from_prefixed_env()
    ServerSession(app)
    assert isinstance(store_of(app).backend, MemoryBackend)
    assert store_of(app).settings.expire_time == timedelta(hours=1)


def test_configuration_error_names_key_and_value(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory", SERVERSESSION_RENEW_ON="sometimes")
    with pytest.raises(ConfigError, match="SERVERSESSION_RENEW_ON = 'sometimes'"):
        ServerSession(app)


def test_configuration_header_name(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    app.config["SERVERSESSION_HEADER_NAME"] = "X-Session-Token"
    ServerSession(app)

    @app.post("/set")
    def set_value() -> str:
        session["user"] = request.json["user"]  # type: ignore[index]
        return "ok"

    @app.get("/user")
    def user() -> t.Any:
        return {"user": session.get("user")}

    api = app.test_client(use_cookies=False)
    alice = api.post("/set", json={"user": "alice"}).headers["X-Session-Token"]
    bob = api.post("/set", json={"user": "bob"}).headers["X-Session-Token"]
    response = api.get("/user", headers={"X-Session-Token": alice})
    assert response.json == {"user": "alice"}
    assert "X-Session-Token" in response.headers["Vary"]
    both = {"X-Session-Token": bob, "Cookie": f"session={alice}"}
    assert api.get("/user", headers=both).json == {"user": "bob"}


def test_configuration_max_size(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    app.config["SERVERSESSION_MAX_SIZE"] = 64 * 1024
    server_session = ServerSession(app)
    with app.app_context():
        token = server_session.create({"small": "x"})
        with pytest.raises(SessionTooLargeError):
            server_session.update(token, {"big": "x" * 70_000})
        assert server_session.get(token) == {"small": "x"}


def test_configuration_permanent_false_sets_browser_session_cookie(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    app.config["SERVERSESSION_PERMANENT"] = False
    ServerSession(app)

    @app.get("/")
    def index() -> str:
        session["n"] = 1
        return "ok"

    cookie = app.test_client().get("/").headers["Set-Cookie"]
    assert "Expires" not in cookie


# lifetime.rst


def lifetime_app(tmp_path: t.Any, renew_on: str) -> tuple[Flask, Clock]:
    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    app.config.update(
        SERVERSESSION_EXPIRE_TIME=timedelta(hours=24),
        SERVERSESSION_RENEW_TIME=timedelta(hours=1),
        SERVERSESSION_ABSOLUTE_LIFETIME=timedelta(days=7),
        SERVERSESSION_RENEW_ON=renew_on,
        SERVERSESSION_PERMANENT=True,
    )
    ServerSession(app)
    clock = Clock(MONDAY_0900)
    store_of(app).clock = clock

    @app.post("/add")
    def add() -> str:
        session.setdefault("cart", []).append("item")
        return "added"

    @app.get("/read")
    def read() -> t.Any:
        return {"new": session.new, "expires_at": str(session.expires_at)}

    return app, clock


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """Day 0 is the Monday the session is created."""
    return MONDAY_0900.replace(hour=hour, minute=minute) + timedelta(days=day)


def expiry(app: Flask, client: FlaskClient) -> datetime:
    return store_of(app).fetch(token_of(client)).expires_at


def test_lifetime_timeline(tmp_path: t.Any) -> None:
    app, clock = lifetime_app(tmp_path, "modify")
    client = app.test_client()
    steps = [
        (at(0, 9), "/add", at(1, 9)),
        (at(0, 18), "/add", at(1, 9)),
        (at(1, 8, 30), "/add", at(1, 9, 30)),
        (at(1, 9, 15), "/read", at(1, 9, 30)),
        (at(1, 9, 20), "/add", at(1, 10, 20)),
    ]
    for when, path, expires_at in steps:
        clock.now = when
        if path == "/add":
            client.post(path)
        else:
            client.get(path)
        assert expiry(app, client) == expires_at, when

    token = token_of(client)
    clock.now = at(1, 10, 30)
    assert client.get("/read").json == {"new": True, "expires_at": "None"}
    with pytest.raises(SessionExpiredError):
        store_of(app).fetch(token)


def test_lifetime_absolute_cap(tmp_path: t.Any) -> None:
    app, clock = lifetime_app(tmp_path, "modify")
    client = app.test_client()
    client.post("/add")
    clock.now = at(1, 8, 30)
    while clock.now < at(7, 8, 30):
        client.post("/add")
        assert expiry(app, client) == min(clock.now + timedelta(hours=1), at(7, 9))
        clock.now += timedelta(minutes=30)
    client.post("/add")
    assert expiry(app, client) == at(7, 9)
    token = token_of(client)

    clock.now = at(7, 9)
    client.post("/add")
    assert token_of(client) != token
    assert expiry(app, client) == at(8, 9)


def test_lifetime_renew_on_access_and_never(tmp_path: t.Any) -> None:
    app, clock = lifetime_app(tmp_path, "access")
    client = app.test_client()
    client.post("/add")
    clock.now = at(1, 8, 30)
    client.post("/add")
    clock.now = at(1, 9, 15)
    client.get("/read")
    assert expiry(app, client) == at(1, 10, 15)

    app, clock = lifetime_app(tmp_path, "never")
    client = app.test_client()
    client.post("/add")
    clock.now = at(1, 8, 30)
    client.post("/add")
    assert expiry(app, client) == at(1, 9)
    clock.now = at(1, 9)
    assert client.get("/read").json["new"] is True


def test_lifetime_renew_uses_the_max_rule(tmp_path: t.Any) -> None:
    app, clock = lifetime_app(tmp_path, "never")

    @app.post("/renew")
    def renew() -> str:
        session.renew()
        return "renewed"

    client = app.test_client()
    client.post("/add")
    client.post("/renew")
    assert expiry(app, client) == at(1, 9)
    clock.now = at(1, 8, 30)
    response = client.post("/renew")
    assert expiry(app, client) == at(1, 9, 30)
    assert "Expires=Tue, 06 Jan 2032 09:30:00 GMT" in response.headers["Set-Cookie"]


# backends.rst


def test_backends_memory(tmp_path: t.Any) -> None:
    app = new_app(tmp_path)
    app.config["SERVERSESSION_BACKEND"] = "memory"
    app.config["SERVERSESSION_MEMORY_MAX_ENTRIES"] = 2
    server_session = ServerSession(app)
    with app.app_context():
        tokens = [server_session.create({"n": n}) for n in range(3)]
        assert server_session.count() == 2
        with pytest.raises(SessionNotFoundError):
            server_session.get(tokens[0])


def test_backends_filesystem_layout(tmp_path: t.Any) -> None:
    directory = tmp_path / "var" / "lib" / "myapp" / "sessions"
    app = new_app(tmp_path)
    app.config["SERVERSESSION_BACKEND"] = "filesystem"
    app.config["SERVERSESSION_FILE_DIR"] = str(directory)
    server_session = ServerSession(app)
    with app.app_context():
        token = server_session.create({"user_id": 1})
    key = hashlib.sha256(token.split(".")[0].encode()).hexdigest()
    path = directory / key[:2] / key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with app.app_context():
        assert [k for k, _ in server_session.items()] == [key]


def test_backends_sqlite_file_uses_wal(tmp_path: t.Any) -> None:
    db_file = tmp_path / "var-lib" / "sessions.sqlite"
    app = new_app(tmp_path)
    app.config["SERVERSESSION_SQLALCHEMY_URI"] = f"sqlite:///{db_file}"
    server_session = ServerSession(app)
    with app.app_context():
        server_session.create({"user_id": 1})
    with sqlite3.connect(db_file) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        columns = [row[1] for row in conn.execute("PRAGMA table_info(serversession)")]
    conn.close()
    assert columns == ["key", "data", "created_at", "expires_at"]
    close(app)


def test_backends_sqlite_file_shared_by_several_processes(tmp_path: t.Any) -> None:
    uri = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    apps = [new_app(tmp_path, SERVERSESSION_SQLALCHEMY_URI=uri) for _ in range(2)]
    for app in apps:
        ServerSession(app)
    with apps[0].app_context():
        token = store_of(apps[0]).create({"n": 1})
    with apps[1].app_context():
        assert store_of(apps[1]).get(token) == {"n": 1}
    for app in apps:
        close(app)


def test_backends_flask_sqlalchemy_factory(tmp_path: t.Any) -> None:
    from flask_sqlalchemy import SQLAlchemy

    db = SQLAlchemy()
    server_session = ServerSession()

    def create_app() -> Flask:
        app = Flask(__name__, instance_path=str(tmp_path / "instance"))
        app.config["SECRET_KEY"] = "change me"
        app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///app.sqlite"
        app.config["SERVERSESSION_SQLALCHEMY"] = db
        db.init_app(app)
        server_session.init_app(app)
        return app

    app = create_app()
    assert "serversession" in db.metadata.tables
    with app.app_context():
        db.create_all()
        token = server_session.create({"user_id": 5})
        assert sa.inspect(db.engine).has_table("serversession")
        assert server_session.get(token) == {"user_id": 5}
        db.engine.dispose()
    assert os.path.exists(os.path.join(app.instance_path, "app.sqlite"))


def test_backends_flask_sqlalchemy_bind(tmp_path: t.Any) -> None:
    from flask_sqlalchemy import SQLAlchemy

    db = SQLAlchemy()
    app = new_app(tmp_path)
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///app.sqlite"
    app.config["SERVERSESSION_SQLALCHEMY"] = db
    app.config["SQLALCHEMY_BINDS"] = {"sessions": "sqlite:///sessions.sqlite"}
    app.config["SERVERSESSION_SQLALCHEMY_BIND_KEY"] = "sessions"
    db.init_app(app)
    server_session = ServerSession(app)
    assert "serversession" in db.metadatas["sessions"].tables
    with app.app_context():
        server_session.create({"user_id": 5})
        assert sa.inspect(db.engines["sessions"]).has_table("serversession")
        assert not sa.inspect(db.engine).has_table("serversession")
        for engine in db.engines.values():
            engine.dispose()


def test_backends_table_object_and_own_metadata(tmp_path: t.Any) -> None:
    app = new_app(tmp_path)
    server_session = ServerSession(app)
    with app.app_context():
        table = server_session.backend.table
    assert isinstance(table, sa.Table)
    assert [c.name for c in table.c] == ["key", "data", "created_at", "expires_at"]
    close(app)

    metadata = sa.MetaData()
    make_table("serversession", metadata)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'own.sqlite'}")
    app = new_app(tmp_path)
    app.config["SERVERSESSION_BACKEND"] = SQLAlchemyBackend(engine, metadata=metadata)
    ServerSession(app)
    assert app.extensions["serversession"].backend.table is metadata.tables["serversession"]
    with app.app_context():
        token = store_of(app).create({"n": 1})
        assert store_of(app).get(token) == {"n": 1}
    engine.dispose()


def test_backends_extra_columns_sign_out_everywhere(tmp_path: t.Any) -> None:
    app = new_app(tmp_path)
    app.config["SERVERSESSION_SQLALCHEMY_EXTRA_COLUMNS"] = [
        sa.Column("user_id", sa.Integer, index=True),
    ]
    app.config["SERVERSESSION_SQLALCHEMY_EXTRAS"] = lambda data: {
        "user_id": data.get("user_id"),
    }
    server_session = ServerSession()
    server_session.init_app(app)

    def sign_out_everywhere(user_id: int) -> None:
        backend = server_session.backend
        with backend.engine.begin() as conn:
            conn.execute(sa.delete(backend.table).where(backend.table.c.user_id == user_id))

    with app.app_context():
        mine = [server_session.create({"user_id": 42}) for _ in range(2)]
        other = server_session.create({"user_id": 7})
        sign_out_everywhere(42)
        for token in mine:
            with pytest.raises(SessionNotFoundError):
                server_session.get(token)
        assert server_session.get(other) == {"user_id": 7}
    close(app)


def test_backends_redis_clients_contact_no_server(tmp_path: t.Any) -> None:
    import redis
    from redis.sentinel import Sentinel

    from flask_serversession.backends.redis import RedisBackend

    app = new_app(tmp_path, SERVERSESSION_BACKEND="redis")
    app.config["SERVERSESSION_REDIS"] = redis.Redis(host="cache.internal", port=6379, db=0)
    ServerSession(app)
    assert isinstance(store_of(app).backend, RedisBackend)

    app = new_app(tmp_path, SERVERSESSION_BACKEND="redis")
    sentinel = Sentinel([("sentinel-1", 26379), ("sentinel-2", 26379)], socket_timeout=1)
    app.config["SERVERSESSION_REDIS"] = sentinel.master_for("mymaster", socket_timeout=1)
    ServerSession(app)
    assert isinstance(store_of(app).backend, RedisBackend)

    app = new_app(tmp_path, SERVERSESSION_BACKEND="redis")
    app.config["SERVERSESSION_REDIS"] = "redis://localhost"
    with pytest.raises(ConfigError, match="SERVERSESSION_REDIS"):
        ServerSession(app)


# concurrency.rst


def two_in_flight(app: Flask, token: str) -> t.Iterator[t.Any]:
    """Open the same session for two requests that overlap; yield both, then save both."""
    interface = app.session_interface
    with app.test_request_context(headers={"Cookie": f"session={token}"}):
        first = interface.open_session(app, request)
        second = interface.open_session(app, request)
        yield first, second
        interface.save_session(app, first, app.response_class())  # type: ignore[arg-type]
        interface.save_session(app, second, app.response_class())  # type: ignore[arg-type]


def concurrency_app(tmp_path: t.Any) -> tuple[Flask, str]:
    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    ServerSession(app)
    with app.app_context():
        token = store_of(app).create({"cart": ["book"], "theme": "light"})
    return app, token


def test_concurrency_different_keys_both_survive(tmp_path: t.Any) -> None:
    app, token = concurrency_app(tmp_path)
    for a, b in two_in_flight(app, token):
        a["theme"] = "dark"
        b["cart"].append("pen")
    with app.app_context():
        assert store_of(app).get(token) == {"cart": ["book", "pen"], "theme": "dark"}


def test_concurrency_same_key_last_writer_wins(tmp_path: t.Any) -> None:
    app, token = concurrency_app(tmp_path)
    for a, b in two_in_flight(app, token):
        a["cart"].append("pen")
        b["cart"].append("lamp")
    with app.app_context():
        assert store_of(app).get(token)["cart"] == ["book", "lamp"]


def test_concurrency_lost_increment(tmp_path: t.Any) -> None:
    app, token = concurrency_app(tmp_path)
    for a, b in two_in_flight(app, token):
        a["visits"] = a.get("visits", 0) + 1
        b["visits"] = b.get("visits", 0) + 1
    with app.app_context():
        assert store_of(app).get(token)["visits"] == 1


@pytest.mark.parametrize("action", ["destroy", "regenerate"])
def test_concurrency_destroyed_session_is_not_revived(tmp_path: t.Any, action: str) -> None:
    app, token = concurrency_app(tmp_path)
    for a, b in two_in_flight(app, token):
        getattr(a, action)()
        b["theme"] = "dark"
    with app.app_context(), pytest.raises(SessionNotFoundError):
        store_of(app).get(token)
    assert store_of(app).count() == (1 if action == "regenerate" else 0)
    if action == "regenerate":
        [(_, data)] = store_of(app).items()
        assert data == {"cart": ["book"], "theme": "light"}


# security.rst


def test_security_token_format_and_storage_key(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    ServerSession(app)

    @app.get("/")
    def index() -> str:
        session["n"] = 1
        return "ok"

    @app.get("/key")
    def key() -> str:
        return session.storage_key  # type: ignore[attr-defined,no-any-return]

    client = app.test_client()
    client.get("/")
    token = token_of(client)
    assert TOKEN.fullmatch(token)
    sid = token.split(".")[0]
    assert client.get("/key").text == hashlib.sha256(sid.encode()).hexdigest()
    assert all(sid not in key for key, _ in store_of(app).items())


def test_security_key_rotation(tmp_path: t.Any) -> None:
    backend = MemoryBackend()
    old = new_app(tmp_path, SECRET_KEY="old key", SERVERSESSION_BACKEND=backend)
    ServerSession(old)
    with old.app_context():
        token = store_of(old).create({"user_id": 1})

    app = new_app(tmp_path, SERVERSESSION_BACKEND=backend)
    app.config["SECRET_KEY"] = "new key"
    app.config["SECRET_KEY_FALLBACKS"] = ["old key"]
    ServerSession(app)
    with app.app_context():
        assert store_of(app).get(token) == {"user_id": 1}
        new_token = store_of(app).create({"user_id": 2})

    without = new_app(tmp_path, SECRET_KEY="new key", SERVERSESSION_BACKEND=backend)
    ServerSession(without)
    with without.app_context():
        assert store_of(without).get(new_token) == {"user_id": 2}
        with pytest.raises(SessionNotFoundError):
            store_of(without).get(token)


def test_security_no_pickle_and_refused_values(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    server_session = ServerSession(app)
    values = {
        "when": datetime(2026, 1, 5, tzinfo=timezone.utc),
        "pair": (1, 2),
        "raw": b"\x00",
    }
    with app.app_context():
        token = server_session.create(values)
        assert server_session.get(token) == values
        with pytest.raises(TypeError, match="set"):
            server_session.create({"tags": {"a", "b"}})
        from zoneinfo import ZoneInfo

        berlin = ZoneInfo("Europe/Berlin")
        meeting = datetime(2026, 3, 28, 12, tzinfo=berlin)
        token = server_session.create({"meeting": meeting})
        back = server_session.get(token)["meeting"]
        assert back.tzinfo is berlin and back + timedelta(days=1) == meeting + timedelta(days=1)
        assert (back + timedelta(days=1)).utcoffset() == timedelta(hours=2)
        for changed in [
            datetime(2026, 1, 5, tzinfo=timezone(timedelta(hours=1), "CET")),
            datetime(2026, 3, 29, 2, 30, tzinfo=berlin),
        ]:
            with pytest.raises(TypeError, match="when"):
                server_session.create({"when": changed})


def test_security_untrusted_tokens_start_fresh_sessions(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    ServerSession(app)

    @app.get("/")
    def index() -> t.Any:
        new = session.new
        session["n"] = 1
        return {"new": new}

    with app.app_context():
        real = store_of(app).create({"n": 0})
    forged = real.split(".")[0] + "." + "A" * 43
    for value in ["garbage", forged, "x" * 43 + "." + "y" * 43]:
        client = app.test_client()
        client.set_cookie("session", value)
        assert client.get("/").json == {"new": True}
        assert token_of(client) != value


def test_security_caching_and_counting_rejected_tokens(tmp_path: t.Any) -> None:
    from collections import Counter

    from flask_serversession import signals

    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    ServerSession(app)

    @app.get("/")
    def index() -> t.Any:
        return {"n": session.get("n")}

    @app.post("/")
    def write() -> t.Any:
        session["n"] = 1
        response = jsonify(ok=True)
        response.cache_control.public = True
        return response

    rejected_tokens: Counter[str] = Counter()

    def count_rejected(app: Flask, reason: str) -> None:
        rejected_tokens[reason] += 1

    signals.session_token_rejected.connect(count_rejected)
    try:
        client = app.test_client()
        response = client.post("/")
        assert response.headers["Cache-Control"] == "private"
        real = t.cast(str, token_of(client))
        with app.app_context():
            ServerSession().delete(real)
        for value in ["garbage", real.split(".")[0] + "." + "A" * 43, real]:
            client = app.test_client()
            client.set_cookie("session", value)
            assert client.get("/").json == {"n": None}
        assert rejected_tokens == {"malformed": 1, "bad_signature": 1, "unknown": 1}
    finally:
        signals.session_token_rejected.disconnect(count_rejected)


def test_security_host_cookie_attributes(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    app.config.update(
        SESSION_COOKIE_NAME="__Host-session",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_SAMESITE="Lax",
    )
    ServerSession(app)
    add_auth_views(app)
    client = app.test_client()
    set_cookie = client.post("/plant").headers["Set-Cookie"]
    deleted = client.post("/logout").headers["Set-Cookie"]
    for header in (set_cookie, deleted):
        assert header.startswith("__Host-session=")
        assert "; Secure" in header and "; Path=/" in header and "Domain" not in header
        assert "; HttpOnly" in header and "; SameSite=Lax" in header
    assert "Expires=Thu, 01 Jan 1970" in deleted


def test_security_flash_after_destroy_uses_a_new_id(tmp_path: t.Any) -> None:
    from flask import flash
    from flask import get_flashed_messages

    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    ServerSession(app)
    add_auth_views(app)

    @app.post("/logout-flash")
    def logout_flash() -> str:
        session.destroy()
        flash("Signed out.")
        return "ok"

    @app.get("/messages")
    def messages() -> t.Any:
        return get_flashed_messages()

    client = app.test_client()
    client.post("/login", data={"username": "a", "password": "secret"})
    before = token_of(client)
    client.post("/logout-flash")
    assert token_of(client) != before
    assert client.get("/messages").json == ["Signed out."]


# cli.rst


def test_cli_commands(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SERVERSESSION_BACKEND="filesystem")
    server_session = ServerSession(app)
    clock = Clock(datetime.now(timezone.utc))
    store_of(app).clock = clock
    with app.app_context():
        for n in range(3):
            server_session.create({"user_id": n})
    clock.now += timedelta(days=2)
    with app.app_context():
        server_session.create({"user_id": 9})

    runner = app.test_cli_runner()
    assert runner.invoke(args=["serversession", "count"]).output == "1\n"
    assert runner.invoke(args=["serversession", "purge"]).output == "Removed 3 expired sessions.\n"
    result = runner.invoke(args=["serversession", "clear"], input="n\n")
    assert result.exit_code == 1 and "Every user will be signed out." in result.output
    result = runner.invoke(args=["serversession", "clear", "--yes"])
    assert result.output == "Removed 1 session.\n"

    with app.app_context():
        server_session.create({"user_id": 1})
        removed = server_session.purge_expired()
        live = server_session.count()
        rows = [(key, data.get("user_id")) for key, data in server_session.items()]
    assert (removed, live) == (0, 1)
    assert rows[0][1] == 1 and len(rows[0][0]) == 64


# customizing.rst


class DictBackend(Backend):
    """Sessions in a dict of this process."""

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self._lock = threading.Lock()

    def load(self, key: str) -> Record | None:
        with self._lock:
            return self._records.get(key)

    def create(self, key: str, record: Record) -> None:
        with self._lock:
            self._records[key] = replace(record, data=dict(record.data), values=None)

    def update(self, key: str, delta: Delta, now: datetime) -> bool:
        with self._lock:
            record = self._records.get(key)
            if record is None or record.expires_at <= now:
                return False
            if not expected(record.data, delta):
                return False
            data = {k: v for k, v in record.data.items() if k not in delta.deleted}
            data.update(delta.set)
            check_size(data_size(record.data), data_size(data), delta.max_size)
            self._records[key] = replace(record, data=data, expires_at=delta.expires_at)
            return True

    def take(self, key: str, now: datetime) -> Record | None:
        with self._lock:
            record = self._records.pop(key, None)
        return record if record is not None and record.expires_at > now else None

    def delete(self, key: str) -> None:
        with self._lock:
            self._records.pop(key, None)

    def purge_expired(self, now: datetime, *, longest_lifetime: timedelta | None = None) -> int:
        with self._lock:
            expired = [k for k, r in self._records.items() if r.expires_at <= now]
            for key in expired:
                del self._records[key]
            return len(expired)

    def count(self, now: datetime) -> int:
        with self._lock:
            return sum(r.expires_at > now for r in self._records.values())

    def items(self, now: datetime) -> t.Iterator[tuple[str, Record]]:
        with self._lock:
            live = [(k, r) for k, r in self._records.items() if r.expires_at > now]
        yield from live

    def clear(self) -> int:
        with self._lock:
            removed = len(self._records)
            self._records.clear()
            return removed


def test_customizing_dict_backend_in_an_app(tmp_path: t.Any) -> None:
    app = new_app(tmp_path)
    app.config["SERVERSESSION_BACKEND"] = DictBackend()
    ServerSession(app)
    add_auth_views(app)
    client = app.test_client()
    client.post("/login", data={"username": "a", "password": "secret"})
    assert client.get("/").json == {"user_id": 7}
    client.post("/logout")
    assert store_of(app).count() == 0


def contract_tests() -> list[t.Any]:
    from tests.backends import test_contract

    return [
        function
        for name, function in vars(test_contract).items()
        if name.startswith("test_")
        and callable(function)
        and set(inspect.signature(function).parameters) <= {"backend", "backend_name"}
    ]


@pytest.mark.parametrize("contract_test", contract_tests(), ids=lambda f: f.__name__)
def test_customizing_dict_backend_passes_the_contract(contract_test: t.Any) -> None:
    arguments = {"backend": DictBackend(), "backend_name": "dict"}
    wanted = inspect.signature(contract_test).parameters
    contract_test(**{name: arguments[name] for name in wanted})


# migrating.rst


def test_migrating_cookie_session_values_are_ignored(tmp_path: t.Any) -> None:
    cookie_app = new_app(tmp_path)

    @cookie_app.get("/")
    def set_cookie_session() -> str:
        session["user_id"] = 1
        return "ok"

    client = cookie_app.test_client()
    client.get("/")
    old_value = token_of(client)

    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    ServerSession(app)

    @app.get("/")
    def index() -> t.Any:
        return {"new": session.new, "user_id": session.get("user_id")}

    client = app.test_client()
    client.set_cookie("session", old_value)
    assert client.get("/").json == {"new": True, "user_id": None}


def test_migrating_sliding_window_settings(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    app.config.update(
        SERVERSESSION_EXPIRE_TIME=timedelta(days=31),
        SERVERSESSION_RENEW_TIME=timedelta(days=31),
        SERVERSESSION_RENEW_ON="access",
    )
    ServerSession(app)
    clock = Clock(MONDAY_0900)
    store_of(app).clock = clock

    @app.get("/")
    def index() -> str:
        session.setdefault("n", 1)
        return "ok"

    client = app.test_client()
    client.get("/")
    clock.now += timedelta(days=3)
    client.get("/")
    assert store_of(app).fetch(token_of(client)).expires_at == clock.now + timedelta(days=31)


def test_migrating_clear_keeps_the_id_destroy_does_not(tmp_path: t.Any) -> None:
    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    ServerSession(app)

    @app.post("/<how>")
    def reset(how: str) -> str:
        if how == "start":
            session["a"] = 1
        elif how == "clear":
            session.clear()
            session["b"] = 2
        else:
            session.destroy()
            session["b"] = 2
        return "ok"

    client = app.test_client()
    client.post("/start")
    first = token_of(client)
    client.post("/clear")
    assert token_of(client) == first
    client.post("/destroy")
    assert token_of(client) != first


def test_migrating_schema_metadata() -> None:
    engine = sa.create_engine("sqlite://")
    backend = SQLAlchemyBackend(engine, metadata=sa.MetaData(schema="sessions"))
    assert backend.table.schema == "sessions"
    engine.dispose()


# example_app/README.md


def test_example_app_api_with_token_header(tmp_path: t.Any) -> None:
    from example_app import create_app

    app = create_app({"SERVERSESSION_BACKEND": "memory"}, instance_path=str(tmp_path / "i"))
    api = app.test_client(use_cookies=False)
    assert api.get("/api/cart").status_code == 401
    token = api.post("/api/login", json={"username": "bob"}).json["token"]  # type: ignore[index]
    headers = {"X-Session-Token": token}
    assert api.post("/api/cart", json={"item": "tea"}, headers=headers).json == {
        "user": "bob",
        "cart": ["tea"],
    }
    assert api.get("/api/cart", headers=headers).json == {"user": "bob", "cart": ["tea"]}


def test_example_app_pages(tmp_path: t.Any) -> None:
    from example_app import create_app

    app = create_app({"SERVERSESSION_BACKEND": "memory"}, instance_path=str(tmp_path / "i"))
    client = app.test_client()
    assert client.get("/admin").location == "/login"
    client.post("/login", data={"username": "alice"})
    client.post("/cart", data={"item": "apple"})
    page = client.get("/session").text
    assert 'id="storage-key"' in page and "1 hour from now" in page
    assert client.post("/session/renew").status_code == 302
    page = client.get("/admin").text
    assert '<span id="count">1</span>' in page and "<td>alice</td>" in page
    client.post("/admin/purge")
    assert "Removed 0 expired sessions." in client.get("/admin").text
    client.post("/cart/empty")
    assert "The cart is empty." in client.get("/cart").text


# backends.rst, against real servers


def round_trip(app: Flask) -> None:
    """Store, change and count a session through the app's backend; then clear it."""
    with app.app_context():
        token = store_of(app).create({"cart": ["book"]})
        store_of(app).update(token, {"cart": ["book", "pen"]})
        assert store_of(app).get(token) == {"cart": ["book", "pen"]}
        assert store_of(app).count() == 1
        assert store_of(app).purge_expired() == 0
        assert store_of(app).clear() == 1


def test_backends_redis_keep_expired(tmp_path: t.Any, redis_server: t.Any) -> None:
    from datetime import timedelta

    import redis

    from flask_serversession.backends.redis import RedisBackend
    from tests.support.redis_servers import unique_prefix

    app = new_app(tmp_path)
    client = redis.Redis(host="127.0.0.1", port=redis_server.port)
    app.config["SERVERSESSION_BACKEND"] = RedisBackend(
        client, keep_expired=timedelta(minutes=5), key_prefix=unique_prefix()
    )
    ServerSession(app)
    backend = t.cast(RedisBackend, store_of(app).backend)
    with app.app_context():
        token = store_of(app).create({"cart": ["book"]})
    key = store_of(app).storage_key(t.cast(str, store_of(app).sid_from(token)))
    lifetime_ms = app.config["SERVERSESSION_EXPIRE_TIME"].total_seconds() * 1000
    ttl = int(client.pttl(backend.key_prefix + key))
    assert lifetime_ms + 290_000 < ttl <= lifetime_ms + 300_001
    backend.clear()
    client.close()


def test_backends_redis_url_single_sentinel_and_cluster(
    tmp_path: t.Any, redis_server: t.Any, redis_sentinel: t.Any, redis_cluster: t.Any
) -> None:
    import redis
    from redis.cluster import RedisCluster
    from redis.sentinel import Sentinel

    from tests.support.redis_servers import unique_prefix

    app = new_app(tmp_path, SERVERSESSION_KEY_PREFIX=unique_prefix())
    app.config["SERVERSESSION_BACKEND"] = "redis"
    app.config["SERVERSESSION_REDIS_URL"] = f"redis://127.0.0.1:{redis_server.port}/0"
    ServerSession(app)
    round_trip(app)
    close(app)

    clients = [
        redis.Redis(host="127.0.0.1", port=redis_server.port, db=0),
        Sentinel([("127.0.0.1", redis_sentinel.sentinel.port)], socket_timeout=1).master_for(
            redis_sentinel.service_name, socket_timeout=1
        ),
        RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0]),
    ]
    for client in clients:
        app = new_app(tmp_path, SERVERSESSION_KEY_PREFIX=unique_prefix())
        app.config["SERVERSESSION_BACKEND"] = "redis"
        app.config["SERVERSESSION_REDIS"] = client
        ServerSession(app)
        round_trip(app)
        client.close()


def test_backends_postgresql_uri(tmp_path: t.Any, postgres_url: str) -> None:
    app = new_app(tmp_path, SERVERSESSION_SQLALCHEMY_TABLE="docs_example_sessions")
    app.config["SERVERSESSION_SQLALCHEMY_URI"] = postgres_url
    ServerSession(app)
    round_trip(app)
    backend = app.extensions["serversession"].backend
    backend.table.drop(backend.engine)
    close(app)


def test_backends_postgresql_synchronous_commit_off(tmp_path: t.Any, postgres_url: str) -> None:
    app = new_app(tmp_path, SERVERSESSION_SQLALCHEMY_TABLE="docs_example_async_commit")
    app.config["SERVERSESSION_SQLALCHEMY_URI"] = (
        postgres_url + "?options=-csynchronous_commit%3Doff"
    )
    ServerSession(app)
    round_trip(app)
    backend = app.extensions["serversession"].backend
    with backend.engine.connect() as conn:
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
    backend.table.drop(backend.engine)
    close(app)


# lifetime.rst: remember me and the audit log


def test_lifetime_remember_me_and_audit_log(tmp_path: t.Any, caplog: t.Any) -> None:
    import logging

    from flask_serversession import signals

    app = new_app(tmp_path, SERVERSESSION_BACKEND="memory")
    ServerSession(app)
    audit = logging.getLogger("audit")

    def check_password(username: str, password: str) -> t.Any:
        assert password == "secret"
        return type("User", (), {"id": 7})

    @app.post("/sign-in")
    def sign_in() -> t.Any:
        user = check_password(request.form["username"], request.form["password"])
        session.regenerate()
        session["user_id"] = user.id
        # None: an earlier "remember me" of this browser does not carry over.
        session.set_lifetime(timedelta(days=30) if request.form.get("remember") else None)
        return redirect(url_for("index"))

    @app.get("/")
    def index() -> t.Any:
        return {"user_id": session.get("user_id")}

    def log_created(app: Flask, storage_key: str) -> None:
        audit.info("session %s created", storage_key[:12])

    def log_regenerated(app: Flask, old_storage_key: str, storage_key: str) -> None:
        audit.info("session %s became %s", old_storage_key[:12], storage_key[:12])

    def log_destroyed(app: Flask, storage_key: str) -> None:
        audit.info("session %s ended", storage_key[:12])

    signals.session_created.connect(log_created)
    signals.session_regenerated.connect(log_regenerated)
    signals.session_destroyed.connect(log_destroyed)
    try:
        caplog.set_level(logging.INFO, logger="audit")
        client = app.test_client()
        response = client.post(
            "/sign-in", data={"username": "a", "password": "secret", "remember": "1"}
        )
        assert "Expires=" in response.headers["Set-Cookie"]
        assert client.get("/").json == {"user_id": 7}
        forgetful = app.test_client()
        response = forgetful.post("/sign-in", data={"username": "a", "password": "secret"})
        assert "Expires=" not in response.headers["Set-Cookie"]
        assert [r.getMessage().split()[-1] for r in caplog.records] == ["created", "created"]
        # The remembered browser signs in again without "remember me".
        response = client.post("/sign-in", data={"username": "a", "password": "secret"})
        assert "Expires=" not in response.headers["Set-Cookie"]
        assert client.get("/").json == {"user_id": 7}
    finally:
        signals.session_created.disconnect(log_created)
        signals.session_regenerated.disconnect(log_regenerated)
        signals.session_destroyed.disconnect(log_destroyed)


def test_configuration_synchronous_commit(tmp_path: t.Any, postgres_url: str) -> None:
    app = new_app(tmp_path, SERVERSESSION_BACKEND="sqlalchemy")
    app.config["SERVERSESSION_SQLALCHEMY_URI"] = postgres_url
    app.config["SERVERSESSION_SQLALCHEMY_SYNCHRONOUS_COMMIT"] = False
    app.config["SERVERSESSION_SQLALCHEMY_TABLE"] = f"sync_commit_{os.getpid()}"
    ServerSession(app)
    backend = t.cast(SQLAlchemyBackend, store_of(app).backend)
    with app.app_context():
        token = ServerSession().create({"a": 1})
        assert ServerSession().get(token) == {"a": 1}
    backend.table.drop(backend.engine)
    backend.close()

    sqlite_app = new_app(tmp_path, SERVERSESSION_BACKEND="sqlalchemy")
    sqlite_app.config["SERVERSESSION_SQLALCHEMY_SYNCHRONOUS_COMMIT"] = False
    with pytest.raises(ConfigError, match="SERVERSESSION_SQLALCHEMY_SYNCHRONOUS_COMMIT"):
        ServerSession(sqlite_app)
