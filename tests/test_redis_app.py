from __future__ import annotations

import typing as t

import pytest
from flask import Flask

from flask_serversession.backends.redis import RedisBackend

from .conftest import session_cookie
from .conftest import store_of
from .support.redis_servers import client_library
from .support.redis_servers import Counter
from .support.redis_servers import RedisServer

#: Every test of the module runs with redis-py and with valkey-py (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("redis_library")


def test_a_request_costs_one_round_trip_per_load_and_per_save(
    make_app: t.Callable[..., Flask], redis_server: RedisServer
) -> None:
    counter = Counter()
    pool = client_library().ConnectionPool(
        connection_class=counter.connection_class(), host="127.0.0.1", port=redis_server.port
    )
    app = make_app("redis", SERVERSESSION_REDIS=client_library().Redis(connection_pool=pool))
    client = app.test_client()
    client.post("/set", json={"a": 1})
    client.post("/set", json={"a": 2})

    assert counter.measure(lambda: client.get("/untouched"))[0] == 0
    assert counter.measure(lambda: client.get("/get/a"))[0] == 1
    assert counter.measure(lambda: client.post("/set", json={"a": 3}))[0] == 2
    assert counter.measure(lambda: client.post("/set", json={"b": 1}))[0] == 2
    fresh = app.test_client()
    assert counter.measure(lambda: fresh.post("/set", json={"a": 1}))[0] == 1


def test_killed_server_gives_503_and_service_resumes(
    make_app: t.Callable[..., Flask], make_redis_server: t.Callable[..., RedisServer]
) -> None:
    server = make_redis_server()
    app = make_app("redis", SERVERSESSION_REDIS=server.client(), SERVERSESSION_KEY_PREFIX="kill:")
    client = app.test_client()
    client.post("/set", json={"cart": ["tea"]})
    token = session_cookie(client)

    server.kill()
    assert client.get("/untouched").status_code == 200
    assert client.get("/dump").status_code == 503
    response = client.post("/append/cart", json="milk")
    assert response.status_code == 503
    assert session_cookie(client) == token

    server.start()
    response = client.get("/dump")
    assert response.status_code == 200
    assert response.json == {}
    client.post("/set", json={"after": "restart"})
    assert client.get("/dump").json == {"after": "restart"}


def test_data_survives_a_restart_with_persistence(
    make_app: t.Callable[..., Flask], make_redis_server: t.Callable[..., RedisServer]
) -> None:
    server = make_redis_server("--appendonly", "yes", "--appendfsync", "always")
    app = make_app("redis", SERVERSESSION_REDIS=server.client())
    client = app.test_client()
    client.post("/set", json={"cart": ["tea"]})
    server.stop()
    assert client.get("/dump").status_code == 503
    server.start()
    assert client.get("/dump").json == {"cart": ["tea"]}
    client.post("/append/cart", json="milk")
    assert client.get("/dump").json == {"cart": ["tea", "milk"]}


def test_two_apps_on_one_server_keep_apart(
    make_app: t.Callable[..., Flask], make_redis_server: t.Callable[..., RedisServer]
) -> None:
    server = make_redis_server()
    first = make_app("redis", SERVERSESSION_REDIS_URL=server.url, SERVERSESSION_KEY_PREFIX="a:")
    second = make_app("redis", SERVERSESSION_REDIS_URL=server.url, SERVERSESSION_KEY_PREFIX="b:")
    first.test_client().post("/set", json={"app": "first"})
    assert isinstance(store_of(first).backend, RedisBackend)
    with second.app_context():
        assert store_of(second).count() == 0
    with first.app_context():
        assert store_of(first).count() == 1
        assert store_of(second).clear() == 0
        assert store_of(first).count() == 1
