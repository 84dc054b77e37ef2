"""Rotation during a Redis Cluster node outage (issue 28, point 2), on a real cluster of
this test's own: a rotation writes only to the node that holds the session, so every
session on a live node rotates and keeps everything; a session on the node that is down
answers 503 and is not lost by it."""

from __future__ import annotations

import typing as t
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask

from .conftest import Clock
from .conftest import session_cookie
from .conftest import store_of
from .support.redis_servers import make_cluster
from .support.redis_servers import RedisCluster

#: Sessions made on the nodes that stay up.
SESSIONS = 12
#: Safety bound on the sessions made to find them.
MAX_SESSIONS = 200


@pytest.fixture
def cluster(tmp_path: Path) -> t.Iterator[RedisCluster]:
    # The live nodes keep serving their own slots while one is down.
    yield from make_cluster(tmp_path, "--cluster-require-full-coverage", "no")


def test_a_node_outage_loses_no_rotating_session(
    make_app: t.Callable[..., Flask], cluster: RedisCluster
) -> None:
    client = cluster.client(socket_timeout=1.0, socket_connect_timeout=0.5)
    app = make_app(
        "redis",
        SERVERSESSION_REDIS=client,
        SERVERSESSION_ROTATE_EVERY=timedelta(hours=1),
    )
    clock = Clock()
    store_of(app).clock = clock
    backend = t.cast(t.Any, store_of(app).backend)
    down = cluster.servers[-1]

    def node_port(token: str) -> int:
        with app.app_context():
            key = store_of(app).storage_key(t.cast(str, store_of(app).sid_from(token)))
        return int(client.get_node_from_key(backend.key_prefix + key).port)

    live: list[tuple[t.Any, str]] = []
    on_down: list[tuple[t.Any, str]] = []
    for n in range(MAX_SESSIONS):
        if len(live) == SESSIONS and on_down:
            break
        browser = app.test_client()
        assert browser.post("/set", json={"user": f"user-{n}"}).status_code == 200
        token = t.cast(str, session_cookie(browser))
        (on_down if node_port(token) == down.port else live).append((browser, token))
    assert len(live) == SESSIONS and on_down

    clock.advance(minutes=61)
    down.kill()
    for browser, token in live[:SESSIONS]:
        response = browser.get("/dump")
        assert response.status_code == 200 and response.json["user"].startswith("user-")
        assert session_cookie(browser) != token  # rotated
        assert browser.get("/dump").json == response.json
    browser, token = on_down[0]
    assert browser.get("/dump").status_code == 503
    assert session_cookie(browser) == token
