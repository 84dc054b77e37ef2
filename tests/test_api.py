from __future__ import annotations

import typing as t
from datetime import timedelta

import pytest
from flask import Flask

from flask_serversession import ServerSession
from flask_serversession import SessionNotFoundError

from .conftest import Clock
from .conftest import session_cookie
from .conftest import store_of

BAD_TOKENS = ["", "garbage", "A" * 43, "A" * 43 + "." + "B" * 43]


@pytest.fixture
def extension() -> ServerSession:
    return ServerSession()


def test_create_get_update_delete(backend_app: Flask, extension: ServerSession) -> None:
    with backend_app.app_context():
        token = extension.create({"user_id": 123, "roles": ["admin"]})
        assert extension.get(token) == {"user_id": 123, "roles": ["admin"]}
        extension.update(token, {"user_id": 1337})
        assert extension.get(token) == {"user_id": 1337}
        extension.delete(token)
        with pytest.raises(SessionNotFoundError):
            extension.get(token)
        with pytest.raises(SessionNotFoundError):
            extension.delete(token)
        with pytest.raises(SessionNotFoundError):
            extension.update(token, {"a": 1})
        with pytest.raises(SessionNotFoundError):
            extension.renew(token)


def test_count_items_clear(backend_app: Flask, extension: ServerSession) -> None:
    with backend_app.app_context():
        tokens = [extension.create({"n": n}) for n in range(3)]
        assert extension.count() == 3
        assert sorted(data["n"] for _, data in extension.items()) == [0, 1, 2]
        assert all(len(key) == 64 for key, _ in extension.items())
        extension.delete(tokens[0])
        assert extension.clear() == 2
        assert extension.count() == 0


def test_get_returns_a_copy(app: Flask, extension: ServerSession) -> None:
    with app.app_context():
        token = extension.create({"cart": ["tea"]})
        extension.get(token)["cart"].append("milk")
        assert extension.get(token) == {"cart": ["tea"]}


@pytest.mark.parametrize("token", BAD_TOKENS)
def test_bad_tokens_raise_not_found(app: Flask, extension: ServerSession, token: str) -> None:
    with app.app_context():
        for call in (extension.get, extension.renew, extension.delete):
            with pytest.raises(SessionNotFoundError):
                call(token)
        with pytest.raises(SessionNotFoundError):
            extension.update(token, {})


def test_token_works_as_a_cookie(app: Flask, extension: ServerSession) -> None:
    with app.app_context():
        token = extension.create({"user": "api"})
    client = app.test_client()
    client.set_cookie("session", token)
    assert client.get("/dump").json == {"user": "api"}
    client.post("/set", json={"seen": True})
    assert session_cookie(client) == token
    with app.app_context():
        assert extension.get(token) == {"user": "api", "seen": True}


def test_renew_follows_the_max_rule(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(SERVERSESSION_EXPIRE_TIME=7200, SERVERSESSION_RENEW_TIME=3600)
    clock = Clock()
    store_of(app).clock = clock
    extension = ServerSession()
    with app.app_context():
        token = extension.create({"a": 1})
        first = clock.now
        assert extension.renew(token) == first + timedelta(hours=2)
        clock.advance(minutes=90)
        assert extension.renew(token) == clock.now + timedelta(hours=1)
        assert extension.get(token) == {"a": 1}


def test_backend_of_the_current_app(make_app: t.Callable[..., Flask]) -> None:
    first, second = make_app(), make_app()
    extension = ServerSession()
    with first.app_context():
        assert extension.backend is store_of(first).backend
    with second.app_context():
        assert extension.backend is store_of(second).backend
