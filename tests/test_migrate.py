"""Moving between stores (docs: migrating.rst, "Moving between stores"):
``SERVERSESSION_MIGRATE_FROM`` moves a session from the old store at its first
use, keeping its key, times, user and data, so no one is signed out."""

from __future__ import annotations

import typing as t
from datetime import datetime
from datetime import timezone
from pathlib import Path

import pytest
from flask import Flask

from flask_serversession import ConfigError
from flask_serversession import ServerSession
from flask_serversession.backends.base import Backend
from flask_serversession.backends.base import Record
from flask_serversession.backends.memory import MemoryBackend
from flask_serversession.backends.moving import MovingBackend

from .conftest import session_cookie
from .conftest import store_of

#: (old store, new store): every backend is a source and a target at least once.
PAIRS = [
    ("sqlite", "postgres"),
    ("sqlite", "redis"),
    ("redis", "postgres"),
    ("filesystem", "redis"),
    ("memory", "sqlite"),
    ("postgres", "filesystem"),
    ("redis", "memory"),
]


def now() -> datetime:
    return datetime.now(timezone.utc)


def key_of(app: Flask, token: str) -> str:
    store = store_of(app)
    sid = store.sid_from(token)
    assert sid is not None
    return store.storage_key(sid)


def signed_in(app: Flask, **data: t.Any) -> tuple[str, dict[str, t.Any]]:
    """A session made through a request of ``app``: its token and what /meta says of it."""
    client = app.test_client()
    client.post("/set", json=data)
    token = session_cookie(client)
    assert token is not None
    return token, client.get("/meta").get_json()


@pytest.mark.parametrize(("old_name", "new_name"), PAIRS)
def test_a_session_moves_at_its_first_use_and_keeps_everything(
    request: pytest.FixtureRequest,
    make_app: t.Callable[..., Flask],
    old_name: str,
    new_name: str,
) -> None:
    old: Backend = request.getfixturevalue(f"{old_name}_backend")
    new: Backend = request.getfixturevalue(f"{new_name}_backend")
    before = make_app(old)
    token, meta = signed_in(before, user="alice", cart=[1, 2])
    other, _ = signed_in(before, n=1)

    after = make_app(new, SERVERSESSION_MIGRATE_FROM=old)
    client = after.test_client()
    client.set_cookie("session", token)
    response = client.get("/dump")
    assert response.get_json() == {"user": "alice", "cart": [1, 2]}
    assert "Set-Cookie" not in response.headers, "the token stays as it was"
    assert client.get("/meta").get_json() == meta, "created_at and expires_at are kept"
    key = key_of(after, token)
    assert new.load(key) is not None
    assert old.load(key) is None

    # A write to a session still in the old store moves it first, then lands.
    client.set_cookie("session", other)
    assert client.post("/set", json={"n": 2}).status_code == 200
    assert store_of(after).get(other) == {"n": 2}
    assert old.count(now()) == 0
    assert new.count(now()) == 2


def test_a_store_named_by_its_settings(
    tmp_path: Path, make_app: t.Callable[..., Flask], redis_backend: Backend
) -> None:
    uri = f"sqlite:///{tmp_path / 'old.sqlite'}"
    before = make_app("sqlalchemy", SERVERSESSION_SQLALCHEMY_URI=uri)
    token, meta = signed_in(before, user="alice")
    settings = {"SERVERSESSION_BACKEND": "sqlalchemy", "SERVERSESSION_SQLALCHEMY_URI": uri}
    after = make_app(redis_backend, SERVERSESSION_MIGRATE_FROM=settings)
    client = after.test_client()
    client.set_cookie("session", token)
    assert client.get("/meta").get_json() == meta
    assert client.get("/dump").get_json() == {"user": "alice"}
    assert redis_backend.count(now()) == 1
    assert store_of(before).backend.count(now()) == 0


def test_without_the_key_the_backend_is_not_wrapped(make_app: t.Callable[..., Flask]) -> None:
    backend = MemoryBackend()
    assert store_of(make_app(backend)).backend is backend


def test_sessions_of_the_current_store_never_look_in_the_old_one(
    make_app: t.Callable[..., Flask],
) -> None:
    old, new = MemoryBackend(), MemoryBackend()
    app = make_app(new, SERVERSESSION_MIGRATE_FROM=old)
    token, _ = signed_in(app, n=1)
    # A session of the current store never looks in the old one.
    calls: list[str] = []
    old.load = lambda key: calls.append(key)  # type: ignore[assignment,method-assign,return-value]
    old.take = lambda key, now: calls.append(key)  # type: ignore[assignment,method-assign,return-value]
    client = app.test_client()
    client.set_cookie("session", token)
    assert client.get("/dump").get_json() == {"n": 1}
    assert calls == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("sqlite:///old.sqlite", "is not valid: expected a Backend instance, or a dict"),
        ({"SERVERSESSION_SQLALCHEMY_URL": "x"}, "Did you mean 'SERVERSESSION_SQLALCHEMY_URI'"),
        ({"SERVERSESSION_EXPIRE_TIME": 10}, "is not a setting of a store"),
        ({"SERVERSESSION_BACKEND": "memory"}, "Pass that MemoryBackend instance"),
        ({"SERVERSESSION_BACKEND": "filesystem"}, "names the store the app uses now"),
        (
            {
                "SERVERSESSION_BACKEND": "filesystem",
                "SERVERSESSION_FILE_DIR": "{instance}/serversession",
            },
            "names the store the app uses now",
        ),
        ({"SERVERSESSION_BACKEND": "redis", "SERVERSESSION_REDIS_URL": "http://x"}, "REDIS_URL"),
    ],
)
def test_a_bad_value_is_refused_by_name(tmp_path: Path, value: t.Any, message: str) -> None:
    app = Flask("tests", instance_path=str(tmp_path))
    if isinstance(value, dict):
        value = {k: str(v).format(instance=tmp_path) for k, v in value.items()}
    app.config.update(
        SECRET_KEY="k", SERVERSESSION_BACKEND="filesystem", SERVERSESSION_MIGRATE_FROM=value
    )
    with pytest.raises(ConfigError, match="SERVERSESSION_MIGRATE_FROM") as info:
        ServerSession(app)
    assert message in str(info.value)


def test_the_current_backend_is_refused(make_app: t.Callable[..., Flask]) -> None:
    backend = MemoryBackend()
    with pytest.raises(ConfigError, match="SERVERSESSION_MIGRATE_FROM is the backend"):
        make_app(backend, SERVERSESSION_MIGRATE_FROM=backend)


def test_a_users_sessions_are_listed_and_revoked_in_both_stores(
    make_app: t.Callable[..., Flask], sqlite_backend: Backend, redis_backend: Backend
) -> None:
    before = make_app(sqlite_backend, SERVERSESSION_USER_KEY="user")
    in_old = [signed_in(before, user="alice")[0] for _ in range(2)]
    signed_in(before, user="bob")
    after = make_app(
        redis_backend, SERVERSESSION_USER_KEY="user", SERVERSESSION_MIGRATE_FROM=sqlite_backend
    )
    moved = in_old.pop()
    client = after.test_client()
    client.set_cookie("session", moved)
    client.get("/dump")
    in_new = signed_in(after, user="alice")[0]
    extension = ServerSession()
    with after.app_context():
        listed = {info.storage_key for info in extension.user_sessions("alice")}
        assert listed == {key_of(after, token) for token in [*in_old, moved, in_new]}
        assert extension.revoke_user("alice") == 3
        assert extension.user_sessions("alice") == []
        assert [info.user_id for info in extension.user_sessions("bob")] == ["bob"]
    assert sqlite_backend.count(now()) == 1
    assert redis_backend.count(now()) == 0


def test_a_failed_add_leaves_the_session_in_the_old_store(
    make_app: t.Callable[..., Flask],
) -> None:
    from flask_serversession import BackendError

    class Failing(MemoryBackend):
        def add(self, key: str, record: Record, now: datetime) -> bool:
            raise BackendError("the new store is down")

    old = MemoryBackend()
    token, _ = signed_in(make_app(old), user="alice")
    app = make_app(Failing(), SERVERSESSION_MIGRATE_FROM=old)
    client = app.test_client()
    client.set_cookie("session", token)
    assert client.get("/dump").status_code == 503
    assert old.count(now()) == 1, "the session is still in the old store"


def test_every_operation_sees_both_stores() -> None:
    from datetime import timedelta

    from flask_serversession.backends.base import Delta

    old, new = MemoryBackend(), MemoryBackend()
    moving = MovingBackend(new, old)
    at = now()

    def record(**data: str) -> Record:
        return Record(dict(data), at, at + timedelta(hours=1))

    for key in "abcf":
        old.create(key, record(n=f'"{key}"'))
    old.create("d", Record({}, at - timedelta(days=2), at - timedelta(days=1)))
    new.create("e", record(n='"e"'))
    assert moving.count(at) == 5
    assert sorted(key for key, _ in moving.items(at)) == ["a", "b", "c", "e", "f"]

    later = at + timedelta(hours=5)
    assert moving.touch("a", later, at)
    assert new.load("a") == Record({"n": '"a"'}, at, later) and old.load("a") is None
    assert moving.update("b", Delta(later, {"x": "1"}), at)
    assert new.load("b") == Record({"n": '"b"', "x": "1"}, at, later) and old.load("b") is None
    assert moving.take("c", at) == record(n='"c"')
    assert new.load("c") is None and old.load("c") is None
    moving.delete("f")
    assert old.load("f") is None and moving.load("f") is None
    assert not moving.touch("gone", later, at)
    assert moving.purge_expired(at) == 1
    assert moving.clear() == 3
    assert moving.count(at) == 0


def test_an_old_store_in_the_apps_flask_sqlalchemy_database(
    tmp_path: Path, make_app: t.Callable[..., Flask]
) -> None:
    from flask_sqlalchemy import SQLAlchemy

    uri = f"sqlite:///{tmp_path / 'app.sqlite'}"
    old_db = SQLAlchemy()
    before = Flask("before", instance_path=str(tmp_path))
    before.config.update(
        SECRET_KEY="k", SQLALCHEMY_DATABASE_URI=uri, SERVERSESSION_SQLALCHEMY=old_db
    )
    old_db.init_app(before)
    ServerSession(before)
    token = store_of(before).create({"user": "alice"})

    db = SQLAlchemy()
    new = MemoryBackend()
    after = Flask("after", instance_path=str(tmp_path))
    after.config.update(
        SECRET_KEY="k",
        SQLALCHEMY_DATABASE_URI=uri,
        SERVERSESSION_BACKEND=new,
        SERVERSESSION_MIGRATE_FROM={
            "SERVERSESSION_BACKEND": "sqlalchemy",
            "SERVERSESSION_SQLALCHEMY": db,
        },
    )
    db.init_app(after)
    ServerSession(after)
    with after.app_context():
        assert store_of(after).get(token) == {"user": "alice"}
    assert new.count(now()) == 1
    for app, each in ((before, old_db), (after, db)):
        with app.app_context():
            each.engine.dispose()
