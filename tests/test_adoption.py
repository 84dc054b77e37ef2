"""Adoption of the sessions of Flask's cookie session and of Flask-Session.

The old sessions are written by the real thing: Flask's own session
interface, and Flask-Session 0.8 over Redis, SQLite (Flask-SQLAlchemy) and
cachelib's FileSystemCache.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import re
import sqlite3
import struct
import time
import typing as t
import uuid
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from pathlib import Path

import pytest
from cachelib.file import FileSystemCache
from flask import Flask
from flask import jsonify
from flask import request
from flask import session
from flask.sessions import SecureCookieSessionInterface
from flask_session import Session
from flask_sqlalchemy import SQLAlchemy
from itsdangerous import TimestampSigner
from markupsafe import Markup

from flask_serversession import ConfigError
from flask_serversession import ServerSession
from flask_serversession.backends.redis import RedisBackend
from flask_serversession.signals import session_created

from .conftest import CountingBackend
from .conftest import session_cookie
from .conftest import store_of
from .support.redis_servers import RedisServer
from .support.redis_servers import unique_prefix

SECRET = "test secret key"
TOKEN = re.compile(r"[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}")
MakeApp = t.Callable[..., Flask]

#: Set by unpickling a Trap: proof that something was unpickled.
SPRUNG: list[str] = []


def spring(name: str) -> None:
    SPRUNG.append(name)


class Trap:
    """Unpickling it calls :func:`spring`, as a planted pickle would run any code."""

    def __reduce__(self) -> tuple[t.Any, ...]:
        return (spring, ("trap",))


@pytest.fixture(autouse=True)
def _no_trap_sprung() -> t.Iterator[None]:
    SPRUNG.clear()
    yield
    assert SPRUNG == [], "something was unpickled"


def values_of(app: Flask, client: t.Any) -> dict[str, t.Any]:
    """The data stored for the client's token, as the app would see it."""
    with app.app_context():
        return store_of(app).get(session_cookie(client))


def set_cookie_lines(response: t.Any) -> list[str]:
    return response.headers.getlist("Set-Cookie")


def is_deleted(line: str) -> bool:
    return "Expires=Thu, 01 Jan 1970" in line


def sid_of(cookie: str) -> str:
    """The id in a cookie, without its signature."""
    return cookie.split(".")[0]


# Flask's cookie session


def cookie_session(data: dict[str, t.Any], *, permanent: bool = False, secret: str = SECRET) -> str:
    """The cookie that Flask's own session interface sets for ``data``."""
    app = Flask("cookie_app")
    app.secret_key = secret

    @app.get("/")
    def write() -> str:
        session.update(data)
        session.permanent = permanent
        return "ok"

    client = app.test_client()
    client.get("/")
    value = session_cookie(client)
    assert value is not None
    return value


def aged_cookie_session(data: dict[str, t.Any], age: timedelta) -> str:
    """As :func:`cookie_session`, signed ``age`` ago."""
    app = Flask("cookie_app")
    app.secret_key = SECRET
    serializer = SecureCookieSessionInterface().get_signing_serializer(app)
    assert serializer is not None

    class Earlier(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - age.total_seconds())

    serializer.signer = Earlier
    return serializer.dumps(data)


@pytest.fixture
def cookie_app(make_app: MakeApp) -> Flask:
    return make_app(SERVERSESSION_ADOPT_COOKIE_SESSIONS=True)


def test_cookie_session_moves_to_the_server_with_every_flask_type(cookie_app: Flask) -> None:
    data = {
        "user_id": "42",
        "cart": ["tea", {"qty": 2}],
        "pair": (1, "two"),
        "raw": b"\x00\xff",
        "markup": Markup("<b>hi</b>"),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "when": datetime(2031, 5, 6, 7, 8, 9, tzinfo=timezone.utc),
        "_flashes": [("message", "Welcome back")],
    }
    old = cookie_session(data)
    client = cookie_app.test_client()
    client.set_cookie("session", old)

    response = client.get("/get/user_id")
    assert response.json == {"value": "42"}
    [line] = set_cookie_lines(response)
    assert TOKEN.fullmatch(session_cookie(client) or "")
    assert "Expires" not in line
    assert response.headers["Vary"] == "Cookie"
    stored = values_of(cookie_app, client)
    assert stored == data
    assert [type(stored[k]) for k in data] == [type(v) for v in data.values()]

    response = client.get("/get/user_id")
    assert response.json == {"value": "42"}
    assert set_cookie_lines(response) == []
    with cookie_app.app_context():
        assert store_of(cookie_app).count() == 1


def test_request_that_never_touches_the_session_costs_nothing(make_app: MakeApp) -> None:
    counting = CountingBackend()
    app = make_app(counting, SERVERSESSION_ADOPT_COOKIE_SESSIONS=True)
    client = app.test_client()
    client.set_cookie("session", cookie_session({"user_id": "42"}))

    response = client.get("/untouched")
    assert set_cookie_lines(response) == []
    assert "Vary" not in response.headers
    assert counting.calls == {}

    assert client.get("/get/user_id").json == {"value": "42"}
    assert counting.calls["create"] == 1


@pytest.mark.parametrize(
    "cookie",
    [
        pytest.param(lambda: cookie_session({"user_id": "42"}, secret="other"), id="other key"),
        pytest.param(lambda: cookie_session({"user_id": "42"})[:-2] + "xx", id="tampered"),
        pytest.param(lambda: "not.a.cookie", id="garbage"),
    ],
)
def test_cookie_that_does_not_verify_is_ignored(
    cookie_app: Flask, cookie: t.Callable[[], str]
) -> None:
    client = cookie_app.test_client()
    client.set_cookie("session", cookie())
    response = client.get("/meta")
    assert response.json["new"] is True
    # Left alone, as Flask leaves a cookie it cannot verify.
    assert set_cookie_lines(response) == []
    with cookie_app.app_context():
        assert store_of(cookie_app).count() == 0


def test_secret_key_fallbacks_verify_cookies_of_the_old_key(make_app: MakeApp) -> None:
    app = make_app(
        SERVERSESSION_ADOPT_COOKIE_SESSIONS=True,
        SECRET_KEY="new key",
        SECRET_KEY_FALLBACKS=[SECRET],
    )
    client = app.test_client()
    client.set_cookie("session", cookie_session({"user_id": "42"}))
    assert client.get("/get/user_id").json == {"value": "42"}


def test_cookie_older_than_the_permanent_session_lifetime_is_ignored(
    make_app: MakeApp,
) -> None:
    app = make_app(
        SERVERSESSION_ADOPT_COOKIE_SESSIONS=True,
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=30),
    )
    client = app.test_client()
    client.set_cookie("session", aged_cookie_session({"user_id": "42"}, timedelta(minutes=31)))
    assert client.get("/get/user_id").json == {"value": None}

    client = app.test_client()
    client.set_cookie("session", aged_cookie_session({"user_id": "42"}, timedelta(minutes=29)))
    assert client.get("/get/user_id").json == {"value": "42"}


def test_the_permanent_flag_is_kept(make_app: MakeApp) -> None:
    app = make_app(SERVERSESSION_ADOPT_COOKIE_SESSIONS=True)
    client = app.test_client()
    client.set_cookie("session", cookie_session({"user_id": "42"}, permanent=True))
    response = client.get("/meta")
    assert response.json["permanent"] is True
    [line] = set_cookie_lines(response)
    assert "Expires=" in line

    app = make_app(SERVERSESSION_ADOPT_COOKIE_SESSIONS=True, SERVERSESSION_PERMANENT=True)
    client = app.test_client()
    client.set_cookie("session", cookie_session({"user_id": "42"}, permanent=False))
    response = client.get("/meta")
    assert response.json["permanent"] is False
    [line] = set_cookie_lines(response)
    assert "Expires=" not in line


def test_a_value_the_store_refuses_is_left_out_with_a_warning(
    cookie_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    client = cookie_app.test_client()
    client.set_cookie("session", cookie_session({"user_id": "42", "bad\x00key": "secret value"}))
    with caplog.at_level(logging.WARNING, "flask_serversession"):
        assert client.get("/get/user_id").json == {"value": "42"}
    assert values_of(cookie_app, client) == {"user_id": "42"}
    [record] = caplog.records
    assert "'bad\\x00key' is not adopted" in record.getMessage()
    assert "secret value" not in record.getMessage()


def test_data_larger_than_max_size_is_not_adopted(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(SERVERSESSION_ADOPT_COOKIE_SESSIONS=True, SERVERSESSION_MAX_SIZE=100)
    client = app.test_client()
    client.set_cookie("session", cookie_session({"user_id": "42", "notes": "x" * 200}))
    with caplog.at_level(logging.WARNING, "flask_serversession"):
        assert client.get("/meta").json["new"] is True
    assert "larger than SERVERSESSION_MAX_SIZE" in caplog.text


def test_adopted_session_is_not_new_and_is_stored_at_the_end_of_the_request(
    make_app: MakeApp,
) -> None:
    app = make_app(SERVERSESSION_ADOPT_COOKIE_SESSIONS=True)

    @app.get("/state")
    def state() -> t.Any:
        return jsonify(new=session.new, key=session.storage_key, created=bool(session.created_at))

    client = app.test_client()
    client.set_cookie("session", cookie_session({"user_id": "42"}))
    assert client.get("/state").json == {"new": False, "key": None, "created": False}
    token = session_cookie(client)
    assert TOKEN.fullmatch(token or "")
    expected = hashlib.sha256(sid_of(token or "").encode()).hexdigest()
    assert client.get("/state").json == {"new": False, "key": expected, "created": True}


def test_regenerate_on_the_adopting_request(cookie_app: Flask) -> None:
    client = cookie_app.test_client()
    client.set_cookie("session", cookie_session({"user_id": "42"}))
    client.post("/regenerate")
    first = session_cookie(client)
    assert TOKEN.fullmatch(first or "")
    assert values_of(cookie_app, client) == {"user_id": "42"}

    client.post("/regenerate")
    assert session_cookie(client) != first
    assert values_of(cookie_app, client) == {"user_id": "42"}
    with cookie_app.app_context():
        assert store_of(cookie_app).count() == 1


def test_destroy_on_the_adopting_request(cookie_app: Flask) -> None:
    @cookie_app.post("/sign-out")
    def sign_out() -> t.Any:
        had = session.get("user_id")
        session.destroy()
        return jsonify(had=had, new=session.new)

    client = cookie_app.test_client()
    client.set_cookie("session", cookie_session({"user_id": "42"}))
    response = client.post("/sign-out")
    assert response.json == {"had": "42", "new": True}
    [line] = set_cookie_lines(response)
    assert is_deleted(line)
    with cookie_app.app_context():
        assert store_of(cookie_app).count() == 0


def test_logs_and_signals_carry_nothing_secret(
    cookie_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    old = cookie_session({"user_id": "secret-user", "bad\x00": "secret-value"})
    created: list[dict[str, t.Any]] = []

    def record(sender: Flask, **kwargs: t.Any) -> None:
        created.append(kwargs)

    client = cookie_app.test_client()
    client.set_cookie("session", old)
    with (
        session_created.connected_to(record, cookie_app),
        caplog.at_level(logging.DEBUG, "flask_serversession"),
    ):
        client.get("/get/user_id")
    token = session_cookie(client) or ""
    sid = token.split(".")[0]
    assert created == [{"storage_key": hashlib.sha256(sid.encode()).hexdigest()}]
    assert caplog.records
    for secret in (old, token, sid, "secret-user", "secret-value"):
        assert secret not in caplog.text
        assert secret not in repr(created)


def test_adoption_off_ignores_old_cookies(make_app: MakeApp) -> None:
    counting = CountingBackend()
    app = make_app(counting)
    client = app.test_client()
    client.set_cookie("session", cookie_session({"user_id": "42"}))
    assert client.get("/meta").json["new"] is True
    assert counting.calls == {}


# Configuration


@pytest.mark.parametrize(
    "key", ["SERVERSESSION_ADOPT_COOKIE_SESSIONS", "SERVERSESSION_ADOPT_FLASK_SESSION"]
)
def test_settings_are_booleans(make_app: MakeApp, key: str) -> None:
    with pytest.raises(ConfigError, match=f"{key} = 'yes'"):
        make_app(**{key: "yes"})


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({}, "SESSION_TYPE = None"),
        ({"SESSION_TYPE": "mongodb"}, "SESSION_TYPE = 'mongodb'"),
        ({"SESSION_TYPE": "redis"}, "SESSION_REDIS = None"),
        ({"SESSION_TYPE": "redis", "SESSION_REDIS": "redis://"}, "SESSION_REDIS"),
        ({"SESSION_TYPE": "sqlalchemy"}, "SESSION_SQLALCHEMY = None"),
        ({"SESSION_TYPE": "cachelib", "SESSION_CACHELIB": {}}, "SESSION_CACHELIB = {}"),
        ({"SESSION_TYPE": "filesystem", "SESSION_FILE_DIR": 3}, "SESSION_FILE_DIR = 3"),
        ({"SESSION_TYPE": "redis", "SESSION_KEY_PREFIX": 1}, "SESSION_KEY_PREFIX = 1"),
    ],
)
def test_flask_session_keys_that_name_no_readable_store_fail_at_init(
    make_app: MakeApp, config: dict[str, t.Any], named: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        make_app(SERVERSESSION_ADOPT_FLASK_SESSION=True, **config)


def test_init_contacts_no_server(make_app: MakeApp) -> None:
    import redis

    closed = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    make_app(SERVERSESSION_ADOPT_FLASK_SESSION=True, SESSION_TYPE="redis", SESSION_REDIS=closed)


# Flask-Session


class OldStore:
    """Flask-Session's store in a test: its config, and direct access to its records."""

    kind = ""

    def flask_session_app(self, **config: t.Any) -> Flask:
        """A Flask-Session 0.8 app that signs users in."""
        app = Flask("flask_session_app")
        app.config.update(SECRET_KEY=SECRET, **self.config(), **config)
        self.attach(app)
        Session(app)

        @app.post("/sign-in")
        def sign_in() -> str:
            session.update(request.get_json())
            return "ok"

        return app

    def adopting_app(self, make_app: MakeApp, backend: t.Any = "memory", **config: t.Any) -> Flask:
        app = make_app(backend, SERVERSESSION_ADOPT_FLASK_SESSION=True, **self.config(), **config)
        self.attach(app)
        return app

    def sign_in(self, data: dict[str, t.Any], **config: t.Any) -> str:
        """Sign a user in through Flask-Session; return their cookie."""
        client = self.flask_session_app(**config).test_client()
        client.post("/sign-in", json=data)
        value = session_cookie(client)
        assert value is not None
        return value

    def config(self) -> dict[str, t.Any]:
        """Flask-Session's ``SESSION_*`` keys for a new app."""
        raise NotImplementedError

    def attach(self, app: Flask) -> None:
        """Finish setting up an app configured with :meth:`config`."""

    def has(self, key: str) -> bool:
        raise NotImplementedError

    def expire(self, key: str) -> None:
        raise NotImplementedError

    def plant(self, key: str, raw: bytes) -> None:
        raise NotImplementedError


class RedisStore(OldStore):
    kind = "redis"

    def __init__(self, server: RedisServer) -> None:
        self.client = server.client()
        self.prefix = unique_prefix()

    def config(self) -> dict[str, t.Any]:
        return {
            "SESSION_TYPE": "redis",
            "SESSION_REDIS": self.client,
            "SESSION_KEY_PREFIX": self.prefix,
        }

    def has(self, key: str) -> bool:
        return bool(self.client.exists(self.prefix + key))

    def expire(self, key: str) -> None:
        self.client.pexpire(self.prefix + key, 1)
        deadline = time.monotonic() + 5
        while self.has(key):
            assert time.monotonic() < deadline
            time.sleep(0.005)

    def plant(self, key: str, raw: bytes) -> None:
        self.client.set(self.prefix + key, raw, ex=3600)


class SQLiteStore(OldStore):
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"

    def config(self) -> dict[str, t.Any]:
        return {"SESSION_TYPE": "sqlalchemy", "SESSION_SQLALCHEMY": SQLAlchemy()}

    def attach(self, app: Flask) -> None:
        app.config["SQLALCHEMY_DATABASE_URI"] = self.url
        app.config["SESSION_SQLALCHEMY"].init_app(app)

    def _sql(self, query: str, *args: t.Any) -> list[t.Any]:
        with sqlite3.connect(self.path) as connection:
            return connection.execute(query, args).fetchall()

    def has(self, key: str) -> bool:
        rows = self._sql("SELECT count(*) FROM sessions WHERE session_id = ?", "session:" + key)
        return bool(rows[0][0])

    def expire(self, key: str) -> None:
        past = (datetime.now(timezone.utc) - timedelta(seconds=1)).replace(tzinfo=None)
        self._sql(
            "UPDATE sessions SET expiry = ? WHERE session_id = ?", str(past), "session:" + key
        )

    def plant(self, key: str, raw: bytes) -> None:
        future = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(hours=1)
        self._sql(
            "INSERT INTO sessions (session_id, data, expiry) VALUES (?, ?, ?)",
            "session:" + key,
            raw,
            str(future),
        )


class CacheLibStore(OldStore):
    kind = "cachelib"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cache = FileSystemCache(str(directory), threshold=500)

    def config(self) -> dict[str, t.Any]:
        return {"SESSION_TYPE": "cachelib", "SESSION_CACHELIB": self.cache}

    def path(self, key: str) -> Path:
        return self.directory / hashlib.sha256(f"session:{key}".encode()).hexdigest()

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def expire(self, key: str) -> None:
        path = self.path(key)
        path.write_bytes(struct.pack("I", int(time.time()) - 1) + path.read_bytes()[4:])

    def plant(self, key: str, raw: bytes) -> None:
        self.path(key).write_bytes(struct.pack("I", int(time.time()) + 3600) + raw)


@pytest.fixture(params=["redis", "sqlite", "cachelib"])
def old_store(request: pytest.FixtureRequest, tmp_path: Path) -> t.Iterator[OldStore]:
    if request.param == "redis":
        store = RedisStore(request.getfixturevalue("redis_server"))
        yield store
        store.client.close()
    elif request.param == "sqlite":
        yield SQLiteStore(tmp_path / "flask_session.sqlite")
    else:
        yield CacheLibStore(tmp_path / "flask_session_cache")


def test_flask_session_record_moves_to_the_server_and_leaves_the_old_store(
    make_app: MakeApp, old_store: OldStore
) -> None:
    old = old_store.sign_in({"user_id": "42", "cart": ["tea"]})
    assert old_store.has(sid_of(old))
    app = old_store.adopting_app(make_app)

    client = app.test_client()
    client.set_cookie("session", old)
    response = client.get("/dump")
    # Flask-Session's sessions are permanent by default; the flag is kept.
    assert response.json == {"_permanent": True, "user_id": "42", "cart": ["tea"]}
    [line] = set_cookie_lines(response)
    assert TOKEN.fullmatch(session_cookie(client) or "")
    assert "Expires=" in line
    assert not old_store.has(sid_of(old))
    assert client.get("/get/cart").json == {"value": ["tea"]}

    replay = app.test_client()
    replay.set_cookie("session", old)
    response = replay.get("/meta")
    assert response.json["new"] is True
    # Not a token of this store: left alone, as any cookie it cannot verify.
    assert set_cookie_lines(response) == []
    with app.app_context():
        assert store_of(app).count() == 1


def test_expired_flask_session_record_is_not_adopted(
    make_app: MakeApp, old_store: OldStore
) -> None:
    old = old_store.sign_in({"user_id": "42"})
    old_store.expire(sid_of(old))
    app = old_store.adopting_app(make_app)
    client = app.test_client()
    client.set_cookie("session", old)
    assert client.get("/meta").json["new"] is True
    assert client.get("/get/user_id").json == {"value": None}


@pytest.mark.parametrize("store_kind", ["redis", "sqlite"])
def test_pickled_flask_session_record_is_never_unpickled(
    make_app: MakeApp,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    store_kind: str,
) -> None:
    store: OldStore
    if store_kind == "redis":
        store = RedisStore(request.getfixturevalue("redis_server"))
    else:
        store = SQLiteStore(tmp_path / "flask_session.sqlite")
        store.sign_in({"user_id": "someone else"})  # creates the table
    payload = pickle.dumps({"user_id": "42", "trap": Trap()})
    pickle.loads(payload)
    assert SPRUNG == ["trap"], "the payload runs code when unpickled"
    SPRUNG.clear()

    sid = "pickled-record-from-an-older-flask-session"
    store.plant(sid, payload)
    app = store.adopting_app(make_app)
    client = app.test_client()
    client.set_cookie("session", sid)
    with caplog.at_level(logging.WARNING, "flask_serversession"):
        assert client.get("/meta").json["new"] is True
    assert "never loaded" in caplog.text
    assert sid not in caplog.text
    assert store.has(sid)


def test_cachelib_record_is_read_without_unpickling(
    make_app: MakeApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CacheLibStore(tmp_path / "cache")
    old = store.sign_in({"user_id": "42", "since": datetime(2030, 1, 2, tzinfo=timezone.utc)})
    sid = sid_of(old)
    # What a FileSystemCache holds as Flask-Session wrote it, plus a planted object.
    store.cache.set(f"session:{sid}", {"user_id": "42", "trap": Trap(), "nested": [1, (2, b"3")]})
    app = store.adopting_app(make_app)

    client = app.test_client()
    client.set_cookie("session", old)
    with caplog.at_level(logging.WARNING, "flask_serversession"):
        assert client.get("/get/user_id").json == {"value": "42"}
    assert values_of(app, client) == {"user_id": "42", "nested": [1, (2, b"3")]}
    assert "'trap' is not adopted" in caplog.text
    assert not store.has(sid)

    # A file that holds nothing but an object is not adopted at all.
    store.cache.set("session:planted-object-only", Trap())
    client = app.test_client()
    client.set_cookie("session", "planted-object-only")
    with caplog.at_level(logging.WARNING, "flask_serversession"):
        assert client.get("/meta").json["new"] is True
    assert "does not hold a dict" in caplog.text


def test_redis_record_types_are_read_as_flask_session_returns_them(
    make_app: MakeApp, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(redis_server)
    when = datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    old = store.sign_in({"user_id": "42"})
    app = store.flask_session_app()

    @app.post("/rich")
    def rich() -> str:
        session.update(raw=b"\x00\xff", when=when, pair=(1, 2), prefs={1: "one"})
        return "ok"

    client = app.test_client()
    client.set_cookie("session", old)
    client.post("/rich")

    adopting = store.adopting_app(make_app)
    client = adopting.test_client()
    client.set_cookie("session", old)
    with caplog.at_level(logging.WARNING, "flask_serversession"):
        client.get("/meta")
    # msgpack gives a tuple back as a list, as Flask-Session gave it to the app.
    assert values_of(adopting, client) == {
        "_permanent": True,
        "user_id": "42",
        "raw": b"\x00\xff",
        "when": when,
        "pair": [1, 2],
    }
    assert "'prefs' is not adopted: its dict value cannot be stored" in caplog.text


def test_json_records_and_signed_ids(make_app: MakeApp, redis_server: RedisServer) -> None:
    store = RedisStore(redis_server)
    config = {"SESSION_SERIALIZATION_FORMAT": "json", "SESSION_USE_SIGNER": True}
    with pytest.warns(DeprecationWarning, match="use_signer"):
        old = store.sign_in({"user_id": "42"}, **config)
    sid = sid_of(old)
    assert old != sid
    assert store.client.get(store.prefix + sid).startswith(b"{")

    app = store.adopting_app(make_app, SESSION_USE_SIGNER=True)
    forged = app.test_client()
    forged.set_cookie("session", sid)
    assert forged.get("/get/user_id").json == {"value": None}
    assert store.has(sid)

    client = app.test_client()
    client.set_cookie("session", old)
    assert client.get("/get/user_id").json == {"value": "42"}
    assert not store.has(sid)


def test_filesystem_type_reads_session_file_dir(make_app: MakeApp, tmp_path: Path) -> None:
    directory = tmp_path / "flask_session"
    config = {"SESSION_TYPE": "filesystem", "SESSION_FILE_DIR": str(directory)}
    app = Flask("flask_session_app")
    app.config.update(SECRET_KEY=SECRET, **config)
    with pytest.warns(DeprecationWarning):
        Session(app)

    @app.post("/sign-in")
    def sign_in() -> str:
        session["user_id"] = "42"
        return "ok"

    old_client = app.test_client()
    old_client.post("/sign-in")
    old = session_cookie(old_client) or ""
    path = directory / hashlib.sha256(f"session:{old}".encode()).hexdigest()
    assert path.exists()

    adopting = make_app(SERVERSESSION_ADOPT_FLASK_SESSION=True, **config)
    client = adopting.test_client()
    client.set_cookie("session", old)
    assert client.get("/get/user_id").json == {"value": "42"}
    assert not path.exists()


def test_regenerate_and_destroy_on_the_adopting_request(
    make_app: MakeApp, old_store: OldStore
) -> None:
    app = old_store.adopting_app(make_app)

    old = old_store.sign_in({"user_id": "42"})
    client = app.test_client()
    client.set_cookie("session", old)
    client.post("/regenerate")
    assert TOKEN.fullmatch(session_cookie(client) or "")
    assert values_of(app, client) == {"_permanent": True, "user_id": "42"}
    assert not old_store.has(sid_of(old))

    old = old_store.sign_in({"user_id": "43"})
    client = app.test_client()
    client.set_cookie("session", old)
    [line] = set_cookie_lines(client.post("/destroy"))
    assert is_deleted(line)
    assert not old_store.has(sid_of(old))
    with app.app_context():
        assert store_of(app).count() == 1


def test_old_store_down_does_not_break_the_request(
    make_app: MakeApp,
    make_redis_server: t.Callable[..., RedisServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = make_redis_server()
    store = RedisStore(server)
    old = store.sign_in({"user_id": "42"})
    app = store.adopting_app(make_app)
    server.kill()

    client = app.test_client()
    client.set_cookie("session", old)
    with caplog.at_level(logging.ERROR, "flask_serversession"):
        response = client.post("/set", json={"theme": "dark"})
    assert response.status_code == 200
    assert values_of(app, client) == {"theme": "dark"}
    assert "Flask-Session's store failed" in caplog.text
    assert sid_of(old) not in caplog.text


def test_sql_errors_are_logged_without_the_id(
    make_app: MakeApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteStore(tmp_path / "no_table.sqlite")
    app = store.adopting_app(make_app)
    sid = "a-cookie-whose-table-is-gone"
    client = app.test_client()
    client.set_cookie("session", sid)
    with caplog.at_level(logging.ERROR, "flask_serversession"):
        assert client.get("/meta").json["new"] is True
    assert "no such table" in caplog.text
    assert sid not in caplog.text


def test_db_not_set_up_on_the_app_is_a_config_error(make_app: MakeApp) -> None:
    app = make_app(
        SERVERSESSION_ADOPT_FLASK_SESSION=True,
        SESSION_TYPE="sqlalchemy",
        SESSION_SQLALCHEMY=SQLAlchemy(),
    )
    client = app.test_client()
    client.set_cookie("session", "some-flask-session-id")
    with pytest.raises(ConfigError, match="SESSION_SQLALCHEMY cannot be used"):
        client.get("/meta")


def test_failed_save_keeps_the_old_record(
    make_app: MakeApp, make_redis_server: t.Callable[..., RedisServer], tmp_path: Path
) -> None:
    store = CacheLibStore(tmp_path / "cache")
    old = store.sign_in({"user_id": "42"})
    server = make_redis_server()
    backend = RedisBackend(server.client(), key_prefix=unique_prefix())
    app = store.adopting_app(make_app, backend)
    server.kill()

    client = app.test_client()
    client.set_cookie("session", old)
    response = client.get("/get/user_id")
    assert response.status_code == 503
    assert session_cookie(client) == old
    assert store.has(sid_of(old))

    server.start()
    assert client.get("/get/user_id").json == {"value": "42"}
    assert not store.has(sid_of(old))


def _laughs() -> bytes:
    value: list[t.Any] = []
    for _ in range(60):
        value = [value, value]
    return pickle.dumps({"user_id": "42", "laughs": value})


def _cycle() -> bytes:
    value: list[t.Any] = []
    value.append(value)
    return pickle.dumps({"user_id": "42", "cycle": value})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(_laughs, "more than", id="exponential references"),
        pytest.param(_cycle, "more than", id="refers to itself"),
        pytest.param(lambda: pickle.dumps({"a": 1})[:-3], "malformed", id="truncated"),
        pytest.param(lambda: b"\x80\x05P0\n.", "PERSID", id="persistent id"),
        pytest.param(lambda: b"\x80not a pickle", "not plain data", id="garbage"),
        pytest.param(lambda: b"", "neither msgpack nor JSON", id="empty"),
        pytest.param(lambda: b"[" * 100_000, "neither msgpack nor JSON", id="deep JSON"),
    ],
)
def test_planted_cachelib_files_are_refused_quickly(
    make_app: MakeApp,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    raw: t.Callable[[], bytes],
    reason: str,
) -> None:
    store = CacheLibStore(tmp_path / "cache")
    store.plant("planted-file", raw())
    app = store.adopting_app(make_app)
    client = app.test_client()
    client.set_cookie("session", "planted-file")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "flask_serversession"):
        assert client.get("/meta").json["new"] is True
    assert time.monotonic() - started < 10
    assert reason in caplog.text


def test_truncated_cachelib_file_is_refused(
    make_app: MakeApp, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CacheLibStore(tmp_path / "cache")
    store.path("short").write_bytes(b"\x01\x02")
    app = store.adopting_app(make_app)
    client = app.test_client()
    client.set_cookie("session", "short")
    with caplog.at_level(logging.WARNING, "flask_serversession"):
        assert client.get("/meta").json["new"] is True
    assert "truncated" in caplog.text


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_plain_pickle_reads_plain_data_of_every_protocol(protocol: int) -> None:
    from flask_serversession.adoption import plain_pickle

    shared = ["shared"]
    data = {
        "str": "héllo",
        "ints": [0, -1, 255, 65535, 2**31, -(2**63), 2**100],
        "float": 1.5,
        "consts": [None, True, False],
        "tuples": [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)],
        "nested": {"a": {"b": [shared, shared]}},
    }
    if protocol >= 3:
        data["bytes"] = [b"", b"\x00" * 300]
    got = plain_pickle.loads(pickle.dumps(data, protocol))
    assert got == data
    assert got["nested"]["a"]["b"][0] is got["nested"]["a"]["b"][1]

    objects = {"set": {1}, "frozenset": frozenset([1]), "when": datetime.now(), "trap": Trap()}
    got = plain_pickle.loads(pickle.dumps(objects, protocol))
    assert all(type(got[k]) is plain_pickle.PickledObject for k in objects)


def test_both_sources_at_once(make_app: MakeApp, tmp_path: Path) -> None:
    store = CacheLibStore(tmp_path / "cache")
    app = store.adopting_app(make_app, SERVERSESSION_ADOPT_COOKIE_SESSIONS=True)

    cookie_client = app.test_client()
    cookie_client.set_cookie("session", cookie_session({"user_id": "from cookie"}))
    assert cookie_client.get("/get/user_id").json == {"value": "from cookie"}

    flask_session_client = app.test_client()
    flask_session_client.set_cookie("session", store.sign_in({"user_id": "from store"}))
    assert flask_session_client.get("/get/user_id").json == {"value": "from store"}


# migrating.rst: the two "Switch with zero sign-outs" sections, step by step


def test_migrating_cookie_sessions_steps(tmp_path: Path) -> None:
    old = cookie_session({"user_id": "42", "cart": ["tea"]}, permanent=True)

    def new_app(adopt: bool) -> Flask:
        app = Flask(__name__, instance_path=str(tmp_path / "instance"))
        app.config.update(SECRET_KEY=SECRET, SERVERSESSION_BACKEND="memory")
        # Step 1: the same keys as before, and adoption on.
        app.config["SERVERSESSION_ADOPT_COOKIE_SESSIONS"] = adopt
        ServerSession(app)

        @app.get("/")
        def home() -> str:
            return "home"

        @app.get("/cart")
        def cart() -> t.Any:
            return jsonify(user=session.get("user_id"), cart=session.get("cart"))

        return app

    # Step 2: a request that never touches the session leaves the cookie be;
    # the first that uses it moves the data and swaps the cookie for a token.
    app = new_app(adopt=True)
    client = app.test_client()
    client.set_cookie("session", old)
    assert set_cookie_lines(client.get("/")) == []
    assert session_cookie(client) == old
    response = client.get("/cart")
    assert response.json == {"user": "42", "cart": ["tea"]}
    assert TOKEN.fullmatch(session_cookie(client) or "")
    assert "Expires=" in set_cookie_lines(response)[0]

    # Step 3: past PERMANENT_SESSION_LIFETIME no old cookie verifies, and
    # with the key back to False old cookies are ignored.
    lifetime = app.permanent_session_lifetime
    client = app.test_client()
    client.set_cookie("session", aged_cookie_session({"user_id": "42"}, lifetime + timedelta(1)))
    assert client.get("/cart").json == {"user": None, "cart": None}
    client = new_app(adopt=False).test_client()
    client.set_cookie("session", old)
    assert client.get("/cart").json == {"user": None, "cart": None}


def test_migrating_flask_session_steps(tmp_path: Path, redis_server: RedisServer) -> None:
    import redis

    # Isolation on the shared test server; the page leaves the prefixes alone.
    prefixes = {"SESSION_KEY_PREFIX": unique_prefix(), "SERVERSESSION_KEY_PREFIX": unique_prefix()}
    old_app = Flask("flask_session_app")
    old_app.config.update(
        SECRET_KEY=SECRET,
        SESSION_TYPE="redis",
        SESSION_REDIS=redis.Redis.from_url(redis_server.url),
        **prefixes,
    )
    Session(old_app)

    @old_app.post("/sign-in")
    def sign_in() -> str:
        session["user_id"] = "42"
        return "ok"

    old_client = old_app.test_client()
    old_client.post("/sign-in")
    old = session_cookie(old_client) or ""

    def new_app(adopt: bool) -> Flask:
        app = Flask(__name__, instance_path=str(tmp_path / "instance"))
        app.config.update(SECRET_KEY=SECRET, **prefixes)
        # Step 1: Flask-Session's keys stay; ServerSession replaces Session.
        app.config.update(
            SESSION_TYPE="redis",
            SESSION_REDIS=redis.Redis.from_url(redis_server.url),
            SERVERSESSION_BACKEND="redis",
            SERVERSESSION_REDIS=redis.Redis.from_url(redis_server.url),
            SERVERSESSION_ADOPT_FLASK_SESSION=adopt,
        )
        if adopt:
            ServerSession(app)
        else:
            # Step 3 removes the keys; while they stay, init_app says they are unused.
            with pytest.warns(UserWarning, match="is a Flask-Session setting") as caught:
                ServerSession(app)
            assert {str(w.message).split()[0] for w in caught} == set(prefixes) - {
                "SERVERSESSION_KEY_PREFIX"
            } | {"SESSION_TYPE", "SESSION_REDIS"}

        @app.get("/me")
        def me() -> t.Any:
            return jsonify(user=session.get("user_id"))

        return app

    # Step 2: the first request that uses the session moves the record and
    # deletes it once the new session is saved; the old cookie is worthless.
    app = new_app(adopt=True)
    client = app.test_client()
    client.set_cookie("session", old)
    assert client.get("/me").json == {"user": "42"}
    assert TOKEN.fullmatch(session_cookie(client) or "")
    assert not app.config["SESSION_REDIS"].exists(prefixes["SESSION_KEY_PREFIX"] + old)
    replay = app.test_client()
    replay.set_cookie("session", old)
    assert replay.get("/me").json == {"user": None}
    assert client.get("/me").json == {"user": "42"}

    # Step 3: with the key back to False, a leftover record is not read.
    other = old_app.test_client()
    other.post("/sign-in")
    client = new_app(adopt=False).test_client()
    client.set_cookie("session", session_cookie(other) or "")
    assert client.get("/me").json == {"user": None}
    with app.app_context():
        store_of(app).clear()
