"""The examples of docs/backends.rst's Valkey section, run against the test
servers (Redis 7, which speaks Valkey's protocol)."""

from __future__ import annotations

import typing as t

import pytest
import valkey
from flask import Flask
from valkey.cluster import ValkeyCluster
from valkey.sentinel import Sentinel

from flask_serversession import BackendError
from flask_serversession import ServerSession
from flask_serversession.backends.redis import RedisBackend

from .conftest import store_of
from .support.redis_servers import RedisCluster
from .support.redis_servers import RedisSentinel
from .support.redis_servers import RedisServer
from .support.redis_servers import unique_prefix


def valkey_app(tmp_path: t.Any, **config: t.Any) -> Flask:
    app = Flask("docs", instance_path=str(tmp_path / "instance"))
    app.config.update(SECRET_KEY="change me", SERVERSESSION_KEY_PREFIX=unique_prefix())
    app.config.update(config)
    ServerSession(app)
    return app


def round_trip(app: Flask) -> None:
    """Store, change and count a session through the app's backend; then clear it."""
    store = store_of(app)
    with app.app_context():
        token = store.create({"cart": ["book"]})
        store.update(token, {"cart": ["book", "pen"]})
        assert store.get(token) == {"cart": ["book", "pen"]}
        assert store.count() == 1
        assert store.clear() == 1


def test_a_valkey_url(tmp_path: t.Any, redis_server: RedisServer) -> None:
    app = valkey_app(
        tmp_path,
        SERVERSESSION_BACKEND="redis",
        SERVERSESSION_REDIS_URL=f"valkey://127.0.0.1:{redis_server.port}/0",
    )
    backend = t.cast(RedisBackend, store_of(app).backend)
    assert isinstance(backend.client, valkey.Valkey)
    round_trip(app)
    backend.close()


def test_ready_valkey_clients(
    tmp_path: t.Any,
    redis_server: RedisServer,
    redis_sentinel: RedisSentinel,
    redis_cluster: RedisCluster,
) -> None:
    sentinel = Sentinel([("127.0.0.1", redis_sentinel.sentinel.port)], socket_timeout=1)
    clients = [
        valkey.Valkey(host="127.0.0.1", port=redis_server.port),
        sentinel.master_for(redis_sentinel.service_name, socket_timeout=1),
        ValkeyCluster(host="127.0.0.1", port=redis_cluster.ports[0]),
    ]
    for client in clients:
        app = valkey_app(tmp_path, SERVERSESSION_BACKEND="redis", SERVERSESSION_REDIS=client)
        round_trip(app)
        client.close()


def test_a_valkey_that_is_down_is_a_backend_error(
    tmp_path: t.Any, make_redis_server: t.Callable[..., RedisServer]
) -> None:
    server = make_redis_server()
    client = valkey.Valkey(host="127.0.0.1", port=server.port, socket_timeout=2)
    app = valkey_app(tmp_path, SERVERSESSION_BACKEND="redis", SERVERSESSION_REDIS=client)
    server.kill()
    with app.app_context(), pytest.raises(BackendError) as e:
        store_of(app).create({"a": 1})
    assert isinstance(e.value.__cause__, valkey.exceptions.ConnectionError)
    client.close()
