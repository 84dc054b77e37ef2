from __future__ import annotations

import logging
import time
import typing as t
from datetime import timedelta

import pytest
from flask import Flask

from flask_serversession import BackendError
from flask_serversession import ServerSession
from flask_serversession.backends.base import Record
from flask_serversession.backends.memory import MemoryBackend

from .conftest import Clock
from .conftest import session_cookie
from .conftest import store_of

CLOSED_PORT_URI = "postgresql+psycopg://nobody@127.0.0.1:9/nothing"


@pytest.fixture
def down_app(make_app: t.Callable[..., Flask]) -> Flask:
    return make_app("sqlalchemy", SERVERSESSION_SQLALCHEMY_URI=CLOSED_PORT_URI)


def test_unreachable_store_answers_503_and_keeps_the_cookie(down_app: Flask) -> None:
    store = store_of(down_app)
    token = store.token_for(store.new_sid())
    client = down_app.test_client()
    client.set_cookie("session", token)
    assert client.get("/untouched").status_code == 200
    response = client.get("/dump")
    assert response.status_code == 503
    assert "Set-Cookie" not in response.headers
    assert session_cookie(client) == token


def test_failed_save_turns_the_response_into_503(down_app: Flask) -> None:
    response = down_app.test_client().post("/set", json={"a": 1})
    assert response.status_code == 503
    assert "Set-Cookie" not in response.headers
    assert b"set" not in response.data


def test_programmatic_calls_raise_backend_error(down_app: Flask) -> None:
    extension = ServerSession()
    with down_app.app_context():
        with pytest.raises(BackendError) as info:
            extension.create({"a": 1})
        assert info.value.code == 503
        with pytest.raises(BackendError):
            extension.count()


def test_corrupt_record_is_a_fresh_session_and_logged(
    make_app: t.Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app()
    store = store_of(app)
    client = app.test_client()
    client.post("/set", json={"a": 1})
    token = t.cast(str, session_cookie(client))
    key = store.storage_key(token.partition(".")[0])
    record = t.cast(Record, store.backend.load(key))
    store.backend.create(key, Record({"a": "{not json"}, record.created_at, record.expires_at))

    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        assert client.get("/meta").json["new"] is True
    assert "damaged" in caplog.text
    client.post("/set", json={"b": 2})
    assert session_cookie(client) != token

    extension = ServerSession()
    with app.app_context():
        with pytest.raises(BackendError, match="damaged"):
            extension.get(token)
        assert [data for _, data in extension.items()] == [{"b": 2}]


def test_purge_every_n_requests_runs_in_the_background(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(SERVERSESSION_PURGE_EVERY=3)
    clock = Clock()
    store = store_of(app)
    store.clock = clock
    with app.app_context():
        for n in range(4):
            store.create({"n": n})
    clock.advance(days=2)

    def stored() -> int:
        return sum(1 for _ in store.backend.items(clock.now - timedelta(days=3)))

    client = app.test_client()
    client.get("/untouched")
    client.get("/untouched")
    assert stored() == 4
    client.get("/untouched")
    deadline = time.monotonic() + 5
    while stored() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stored() == 0


class FailingLoads(MemoryBackend):
    """A memory backend whose loads fail as a store that is down does."""

    def load(self, key: str) -> Record | None:
        raise BackendError("Could not load a session: connection refused by db.internal:5432")


def test_failed_load_is_logged_with_the_backends_message_and_no_token(
    make_app: t.Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(FailingLoads())
    store = store_of(app)
    token = store.token_for(store.new_sid())
    client = app.test_client()
    client.set_cookie("session", token)
    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        assert client.get("/dump").status_code == 503
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.name == "flask_serversession"
    assert record.getMessage() == (
        "Loading the session failed: Could not load a session: connection refused by"
        " db.internal:5432"
    )
    assert token not in caplog.text
    assert token.split(".")[0] not in caplog.text
