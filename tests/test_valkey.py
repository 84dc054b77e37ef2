"""Valkey: valkey-py clients and valkey:// URLs build the Redis backend, and the
server's version is never read from the redis_version that Valkey fakes. (The
Redis backend's own tests run with both client libraries: tests/conftest.py.)"""

from __future__ import annotations

import typing as t

import pytest
import valkey
import valkey.cluster
from flask import Flask

from benchmarks.servers import server_version
from flask_serversession.backend_config import build_backend
from flask_serversession.backends.redis import RedisBackend
from flask_serversession.config import DEFAULTS

from .support.redis_servers import free_port
from .support.redis_servers import RedisServer


def config_app(**config: t.Any) -> Flask:
    app = Flask("tests")
    app.config.update(DEFAULTS)
    app.config.update(SERVERSESSION_BACKEND="redis", **config)
    return app


@pytest.mark.parametrize(("scheme", "tls"), [("valkey", False), ("valkeys", True)])
def test_a_valkey_url_builds_a_valkey_client(scheme: str, tls: bool) -> None:
    url = f"{scheme}://127.0.0.1:{free_port()}/2"
    backend = build_backend(config_app(SERVERSESSION_REDIS_URL=url))
    assert isinstance(backend, RedisBackend)
    assert isinstance(backend.client, valkey.Valkey)
    pool = backend.client.connection_pool
    assert pool.connection_kwargs["db"] == 2
    assert (pool.connection_class is valkey.SSLConnection) is tls
    backend.close()


def test_a_redis_url_keeps_a_redis_client() -> None:
    import redis

    backend = build_backend(
        config_app(SERVERSESSION_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    )
    assert isinstance(backend, RedisBackend) and isinstance(backend.client, redis.Redis)
    backend.close()


def test_valkey_clients_and_their_errors_work_end_to_end(
    make_app: t.Callable[..., Flask], make_redis_server: t.Callable[..., RedisServer]
) -> None:
    server = make_redis_server()
    client = valkey.Valkey(host="127.0.0.1", port=server.port, socket_timeout=2.0)
    app = make_app("redis", SERVERSESSION_REDIS=client)
    http = app.test_client()
    http.post("/set", json={"cart": ["tea"]})
    assert http.get("/dump").json == {"cart": ["tea"]}
    server.kill()
    # valkey-py's ConnectionError is not redis-py's: it is still a 503.
    assert http.get("/dump").status_code == 503
    client.close()


INFO_REDIS = {"redis_version": "7.0.15", "redis_mode": "standalone"}
INFO_VALKEY_8 = {
    "redis_version": "7.2.4",
    "server_name": "valkey",
    "valkey_version": "8.1.1",
    "valkey_release_stage": "ga",
}
INFO_VALKEY_72 = {"redis_version": "7.2.4", "server_name": "valkey", "valkey_version": "7.2.8"}


def test_server_version_is_not_read_from_valkeys_redis_version() -> None:
    assert server_version(INFO_REDIS) == "7.0.15"
    assert server_version(INFO_VALKEY_8) == "8.1.1 (Valkey)"
    assert server_version(INFO_VALKEY_72) == "7.2.8 (Valkey)"


def test_a_valkey_cluster_client_is_accepted_without_contacting_it() -> None:
    # Building the client contacts the server, so check the class the backend accepts.
    from flask_serversession.backends.redis.clients import library_of

    library = library_of(valkey.Valkey(host="127.0.0.1", port=free_port()))
    assert library is not None and library.cluster is valkey.cluster.ValkeyCluster
