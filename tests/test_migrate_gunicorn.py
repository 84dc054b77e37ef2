"""Moving between stores under a real gunicorn (docs: migrating.rst): users keep
using their sessions while ``flask serversession migrate`` runs, and none is
lost, copied twice or signed out.

The old store is filled first; then gunicorn serves the app with
``SERVERSESSION_MIGRATE_FROM`` naming it, and client threads read and write
every session (each request may move its session) while the command moves
them all from this process. Each client owns its sessions, so it knows what
each must hold: its user, and the last count it wrote and saw acknowledged.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import random
import re
import secrets
import threading
import time
import typing as t
import uuid
from pathlib import Path

import pytest

from .conftest import store_of
from .support.fault_app import create_app
from .support.gunicorn import Gunicorn
from .support.redis_servers import RedisServer
from .test_faults import app_env
from .test_faults import call

APP = "tests.support.fault_app:create_app()"
WORKERS = 3
SESSIONS = 240
CLIENTS = 4
#: Bounds of each client's run: rounds over its sessions, and seconds.
MAX_ROUNDS = 50
RUN_LIMIT = 120.0


@dataclasses.dataclass
class Client:
    """Reads and writes its own sessions; counts what went wrong."""

    tokens: list[str]
    hits: dict[str, int] = dataclasses.field(default_factory=dict)
    requests: int = 0
    sign_outs: int = 0
    new_cookies: int = 0
    stale_reads: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)

    def request(self, port: int, method: str, path: str, token: str) -> t.Any:
        self.requests += 1
        try:
            reply = call(port, method, path, token)
        except (OSError, http.client.HTTPException) as e:
            self.failures.append(f"{method} {path}: {e!r}")
            return None
        if reply.cookie is not None:
            self.new_cookies += 1
        if reply.status != 200:
            self.failures.append(f"{method} {path}: {reply.status}")
            return None
        return json.loads(reply.body)

    def visit(self, port: int, token: str) -> None:
        data = self.request(port, "GET", "/read", token)
        if data is None:
            return
        if data.get("user") != token[-12:]:
            self.sign_outs += 1
            return
        if data.get("hits", 0) != self.hits.get(token, 0):
            self.stale_reads += 1
        value = self.hits.get(token, 0) + 1
        if self.request(port, "POST", f"/write?key=hits&value={value}", token) is not None:
            self.hits[token] = value

    def run(self, port: int, started: threading.Event, done: threading.Event) -> None:
        deadline = time.monotonic() + RUN_LIMIT
        rounds_after_done = 0
        for _ in range(MAX_ROUNDS):
            if time.monotonic() > deadline or rounds_after_done == 2:
                return
            if done.is_set():
                rounds_after_done += 1
            for token in random.sample(self.tokens, len(self.tokens)):
                self.visit(port, token)
                started.set()


def store_config(name: str, tmp_path: Path, redis_url: str, postgres_url: str) -> dict[str, str]:
    unique = uuid.uuid4().hex[:10]
    if name == "sqlite":
        uri = f"sqlite:///{tmp_path / f'{unique}.sqlite'}"
        return {"SERVERSESSION_BACKEND": "sqlalchemy", "SERVERSESSION_SQLALCHEMY_URI": uri}
    if name == "postgres":
        return {
            "SERVERSESSION_BACKEND": "sqlalchemy",
            "SERVERSESSION_SQLALCHEMY_URI": postgres_url,
            "SERVERSESSION_SQLALCHEMY_TABLE": f"moved_{unique}",
        }
    return {
        "SERVERSESSION_BACKEND": "redis",
        "SERVERSESSION_REDIS_URL": redis_url,
        "SERVERSESSION_KEY_PREFIX": f"moved-{unique}:",
    }


@pytest.mark.parametrize(
    ("old_name", "new_name"), [("sqlite", "redis"), ("sqlite", "postgres"), ("redis", "postgres")]
)
def test_sessions_move_while_gunicorn_serves(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_server: RedisServer,
    postgres_url: str,
    old_name: str,
    new_name: str,
) -> None:
    secret_key = secrets.token_hex(16)
    old = store_config(old_name, tmp_path, redis_server.url, postgres_url)
    new = store_config(new_name, tmp_path, redis_server.url, postgres_url)
    before = create_app(SECRET_KEY=secret_key, **old)
    tokens = []
    for _ in range(SESSIONS):
        token = store_of(before).create({})
        store_of(before).update(token, {"user": token[-12:]})
        tokens.append(token)
    store_of(before).backend.close()

    moving = {**new, "SERVERSESSION_MIGRATE_FROM": json.dumps(old)}
    clients = [Client(tokens[n::CLIENTS]) for n in range(CLIENTS)]
    started, done = threading.Event(), threading.Event()
    app = create_app(SECRET_KEY=secret_key, **{**new, "SERVERSESSION_MIGRATE_FROM": old})
    with Gunicorn(
        APP, env=app_env(secret_key, **moving), log_file=tmp_path / "gunicorn.log", workers=WORKERS
    ) as server:
        threads = [
            threading.Thread(target=c.run, args=(server.port, started, done), daemon=True)
            for c in clients
        ]
        for thread in threads:
            thread.start()
        assert started.wait(30), server.log()
        result = app.test_cli_runner().invoke(args=["serversession", "migrate"])
        done.set()
        for thread in threads:
            thread.join(RUN_LIMIT + 30)
        assert not any(thread.is_alive() for thread in threads), "a client did not finish"
        log = server.log()

    assert result.exit_code == 0, result.output
    found = re.search(r"Moved (\d+) sessions?; skipped (\d+)", result.output)
    assert found, result.output
    moved, skipped = int(found[1]), int(found[2])
    backend = store_of(app).backend
    with app.app_context():
        now = store_of(app).clock()
        keys = [key for key, _ in backend.current.items(now)]  # type: ignore[attr-defined]
        left = backend.old.count(now)  # type: ignore[attr-defined]
        final = {token: store_of(app).get(token) for token in tokens}
    backend.close()
    lost = sum(
        final[token].get("hits", 0) != client.hits.get(token, 0)
        or final[token].get("user") != token[-12:]
        for client in clients
        for token in client.tokens
    )
    figures = (
        f"migrate {old_name}->{new_name} under gunicorn: sessions={SESSIONS}"
        f" requests={sum(c.requests for c in clients)} moved-by-command={moved}"
        f" skipped-by-command={skipped} moved-by-requests={SESSIONS - moved}"
        f" lost={lost} duplicated={len(keys) - len(set(keys))}"
        f" sign-outs={sum(c.sign_outs for c in clients)}"
        f" new-cookies={sum(c.new_cookies for c in clients)}"
        f" stale-reads={sum(c.stale_reads for c in clients)}"
        f" failures={sum(len(c.failures) for c in clients)} left-in-old-store={left}"
    )
    print(f"\n{figures}")
    request.node.user_properties.append(("figures", figures))
    failures = [f for c in clients for f in c.failures[:3]]
    assert failures == [], "\n".join([*failures, log])
    assert sum(c.sign_outs for c in clients) == 0, figures
    assert sum(c.new_cookies for c in clients) == 0, figures
    assert sum(c.stale_reads for c in clients) == 0, figures
    assert lost == 0, figures
    assert sorted(keys) == sorted(set(keys)) and len(keys) == SESSIONS, figures
    assert left == 0, figures
