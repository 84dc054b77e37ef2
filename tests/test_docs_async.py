"""docs/async.rst: async views, and gunicorn's gevent and eventlet workers, on real stores."""

from __future__ import annotations

import json
import threading
import typing as t
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import pytest
from flask import Flask
from flask import session

from flask_serversession import ServerSession

from .support.gunicorn import Gunicorn

#: Clients at once, and requests each, against one gunicorn.
CLIENTS = 8
WRITES = 10


def test_an_async_view_uses_the_session_as_a_sync_one_does(tmp_path: Path) -> None:
    pytest.importorskip("asgiref")
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(SECRET_KEY="k" * 64, SERVERSESSION_BACKEND="memory")
    ServerSession(app)

    # docs/async.rst, "Async views"
    @app.post("/cart")
    async def add_to_cart() -> dict[str, t.Any]:
        session.setdefault("cart", []).append("tea")
        return {"cart": session["cart"]}

    client = app.test_client()
    assert client.post("/cart").json == {"cart": ["tea"]}
    assert client.post("/cart").json == {"cart": ["tea", "tea"]}


def drive(base: str, n: int, failures: list[str]) -> None:
    """One browser-like client: writes its own key WRITES times, then reads the session."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    try:
        for value in range(WRITES):
            request = urllib.request.Request(f"{base}/write?key=c{n}&value={value}", method="POST")
            opener.open(request, timeout=30).read()
        seen = json.load(opener.open(f"{base}/read", timeout=30))
        if seen != {f"c{n}": WRITES - 1}:
            failures.append(f"client {n} read {seen}")
    except OSError as e:
        failures.append(f"client {n}: {e}")


@pytest.mark.parametrize("worker_class", ["gevent"])
@pytest.mark.parametrize("store", ["sqlite", "redis", "postgres"])
def test_gunicorns_green_workers_keep_every_clients_session(
    tmp_path: Path, request: pytest.FixtureRequest, worker_class: str, store: str
) -> None:
    pytest.importorskip(worker_class)
    env = {"FAULT_SECRET_KEY": "k" * 64}
    if store == "sqlite":
        env["FAULT_SERVERSESSION_SQLALCHEMY_URI"] = f"sqlite:///{tmp_path / 's.sqlite'}"
    elif store == "postgres":
        env["FAULT_SERVERSESSION_SQLALCHEMY_URI"] = request.getfixturevalue("postgres_url")
    else:
        env["FAULT_SERVERSESSION_BACKEND"] = "redis"
        env["FAULT_SERVERSESSION_REDIS_URL"] = request.getfixturevalue("redis_server").url
    server = Gunicorn(
        "tests.support.fault_app:create_app()",
        env=env,
        log_file=tmp_path / "gunicorn.log",
        workers=2,
        threads=1,
        worker_class=worker_class,
    )
    failures: list[str] = []
    with server:
        base = f"http://127.0.0.1:{server.port}"
        clients = [threading.Thread(target=drive, args=(base, n, failures)) for n in range(CLIENTS)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(timeout=120)
    assert failures == [], server.log()
    assert "Traceback" not in server.log()
