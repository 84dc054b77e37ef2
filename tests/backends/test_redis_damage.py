from __future__ import annotations

import hashlib
import logging
import threading
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest
from flask import Flask
from flask import jsonify
from flask import session

from flask_serversession.backends.base import Record
from flask_serversession.backends.redis import RedisBackend
from flask_serversession.errors import BackendError

from ..conftest import session_cookie
from ..conftest import store_of
from ..support.redis_servers import DAMAGES
from ..support.redis_servers import LAYOUT_DAMAGES
from ..support.redis_servers import redis_decoded_backend  # noqa: F401

#: Every test of the module runs with redis-py and with valkey-py (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("redis_library")

WAIT = 10


@pytest.fixture(params=["redis", "redis_cluster", "redis_decoded"])
def redis_app(
    request: pytest.FixtureRequest, make_app: t.Callable[..., Flask]
) -> tuple[Flask, RedisBackend]:
    """An app on a Redis backend, with a view that reports and counts visits."""
    backend = t.cast(RedisBackend, request.getfixturevalue(f"{request.param}_backend"))
    app = make_app(backend)

    @app.post("/visit")
    def visit() -> t.Any:
        before, new = dict(session), session.new
        session["visits"] = session.get("visits", 0) + 1
        return jsonify(before=before, new=new)

    return app, backend


def hash_name(app: Flask, backend: RedisBackend, token: str | None) -> str:
    store = store_of(app)
    sid = store.sid_from(token)
    assert sid is not None
    return backend.key_prefix + store.storage_key(sid)


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "flask_serversession" and r.levelno >= logging.ERROR
    ]


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_session_is_replaced_by_a_fresh_one(
    redis_app: tuple[Flask, RedisBackend], damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, backend = redis_app
    client = app.test_client()
    assert client.post("/set", json={"user": "alice"}).status_code == 200
    assert client.post("/visit").json == {"before": {"user": "alice"}, "new": False}
    token = session_cookie(client)
    name = hash_name(app, backend, token)
    DAMAGES[damage](backend.client, name)

    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        response = client.post("/visit")
    assert response.status_code == 200
    assert response.json == {"before": {}, "new": True}
    assert session_cookie(client) not in (None, token)
    assert errors_logged(caplog)
    assert client.post("/visit").json == {"before": {"visits": 1}, "new": False}

    # The programmatic API names the damage instead of pretending there is no session.
    with app.app_context(), pytest.raises(BackendError):
        store_of(app).get(t.cast(str, token))


def test_a_read_only_request_on_a_damaged_session_answers_with_an_empty_one(
    redis_app: tuple[Flask, RedisBackend], caplog: pytest.LogCaptureFixture
) -> None:
    app, backend = redis_app
    client = app.test_client()
    client.post("/set", json={"user": "alice"})
    token = session_cookie(client)
    DAMAGES["expires_us garbage"](backend.client, hash_name(app, backend, token))
    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        response = client.get("/dump")
    assert response.status_code == 200
    assert response.json == {}
    assert errors_logged(caplog)


@pytest.mark.parametrize("damage", ["stray field", "string", "non-UTF-8 value"])
def test_regenerate_of_a_session_damaged_meanwhile_moves_nothing(
    redis_app: tuple[Flask, RedisBackend], damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, backend = redis_app
    loaded, release = threading.Event(), threading.Event()

    @app.post("/login")
    def login() -> str:
        session["user"] = "bob"
        session.regenerate()
        loaded.set()
        assert release.wait(WAIT)
        return "logged in"

    client = app.test_client()
    client.post("/set", json={"cart": ["tea"]})
    name = hash_name(app, backend, session_cookie(client))
    responses: list[int] = []
    request = threading.Thread(target=lambda: responses.append(client.post("/login").status_code))
    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        request.start()
        assert loaded.wait(WAIT)
        DAMAGES[damage](backend.client, name)
        release.set()
        request.join(WAIT)
    assert not request.is_alive() and responses == [200]
    assert backend.client.exists(name) == 0
    assert [k for k, _ in backend.items(store_of(app).clock())] == []
    assert errors_logged(caplog)


@pytest.mark.parametrize("damage", LAYOUT_DAMAGES)
@pytest.mark.parametrize("name", ["redis", "redis_cluster"])
def test_add_replaces_a_damaged_session(
    request: pytest.FixtureRequest, name: str, damage: str
) -> None:
    backend = t.cast(RedisBackend, request.getfixturevalue(f"{name}_backend"))
    now = datetime.now(timezone.utc).replace(microsecond=0)
    key = hashlib.sha256(b"damaged").hexdigest()
    backend.create(key, Record({"user": '"alice"'}, now, now + timedelta(hours=1)))
    DAMAGES[damage](backend.client, backend.key_prefix + key)
    moved = Record({"user": '"bob"'}, now, now + timedelta(hours=2))
    assert backend.add(key, moved, now) is True, "a hash that does not read counts as absent"
    assert backend.load(key) == moved
