"""Rotation under a real gunicorn (docs: rotation.rst): tabs of one browser share a
session across many rotations, on four workers, with no sign-out and no lost write.

Each tab is a thread with its own copy of the cookie, which it updates only
from its own responses, as a browser's tabs hold whatever token their last
response left. The tabs read the session and append numbers to their own
lists while the session's id rotates every second; each read must show every
append its tab had acknowledged. Rotations are counted from the tokens the
tabs were given: every one names the session signed in, with its own secret.
A second run slows the store's writes by 60 ms (``ROTATION_SLOW_WRITES_MS``).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import secrets
import threading
import time
import typing as t
from pathlib import Path

import pytest

from .conftest import store_of
from .support.gunicorn import Gunicorn
from .support.redis_servers import RedisServer
from .support.rotation_app import create_app
from .test_faults import app_env
from .test_faults import call

APP = "tests.support.rotation_app:create_app()"
WORKERS = 4
#: SERVERSESSION_ROTATE_EVERY and SERVERSESSION_ROTATE_GRACE, in seconds.
EVERY = 1
GRACE = 3
#: How long the tabs run, and the safety bound of requests per tab.
RUN_FOR = 8.0
MAX_REQUESTS = 1500
#: Each tab's pause between two of its requests: a busy tab and idler ones,
#: which still hold a rotated-out token when the busy one used the new one.
PAUSES = (0.005, 0.05, 0.2, 0.5)


@dataclasses.dataclass
class Tab:
    """One tab: its own cookie, its acknowledged appends, what went wrong."""

    name: str
    cookie: str
    pause: float
    requests: int = 0
    acked: list[int] = dataclasses.field(default_factory=list)
    sign_outs: int = 0
    stale_reads: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)
    tokens: list[str] = dataclasses.field(default_factory=list)

    def request(self, port: int, method: str, path: str) -> t.Any:
        """One request with this tab's cookie; the cookie follows the response."""
        self.requests += 1
        try:
            reply = call(port, method, path, self.cookie)
        except (OSError, http.client.HTTPException) as e:
            self.failures.append(f"{method} {path}: {e!r}")
            return None
        if reply.cookie is not None:
            self.cookie = reply.cookie
            self.tokens.append(reply.cookie)
        if reply.status == 401:
            self.sign_outs += 1
            return None
        if reply.status != 200:
            self.failures.append(f"{method} {path}: {reply.status}")
            return None
        return json.loads(reply.body)

    def run(self, port: int, deadline: float) -> None:
        for n in range(MAX_REQUESTS):
            if time.monotonic() > deadline:
                return
            if n % 2:
                if self.request(port, "POST", f"/tab/append?tab={self.name}&value={n}"):
                    self.acked.append(n)
            else:
                lists = self.request(port, "GET", "/tab/read")
                if lists is not None and lists.get(f"tab-{self.name}", []) != self.acked:
                    self.stale_reads += 1
            time.sleep(self.pause)


@dataclasses.dataclass
class Figures:
    requests: int = 0
    rotations: int = 0
    sign_outs: int = 0
    lost_writes: int = 0
    duplicated_writes: int = 0
    stale_reads: int = 0
    failures: int = 0
    live_sessions: int = 0

    def line(self, name: str) -> str:
        return f"{name}: " + " ".join(
            f"{k.replace('_', '-')}={v}" for k, v in dataclasses.asdict(self).items()
        )


def run_tabs(
    tmp_path: Path, config: dict[str, str], *, slow_writes_ms: int = 0
) -> tuple[Figures, list[str]]:
    """Serve the app, sign in, let the tabs run; return the figures and problems."""
    secret_key = secrets.token_hex(16)
    rotating = {
        "SERVERSESSION_ROTATE_EVERY": str(EVERY),
        "SERVERSESSION_ROTATE_GRACE": str(GRACE),
        **config,
    }
    env = app_env(secret_key, **rotating)
    if slow_writes_ms:
        env["ROTATION_SLOW_WRITES_MS"] = str(slow_writes_ms)
    problems: list[str] = []
    with Gunicorn(
        APP, env=env, log_file=tmp_path / "gunicorn.log", workers=WORKERS, threads=2
    ) as server:
        signed_in = call(server.port, "POST", "/sign-in")
        assert signed_in.status == 200 and signed_in.cookie, signed_in
        tabs = [
            Tab(str(n), signed_in.cookie, pause, tokens=[signed_in.cookie])
            for n, pause in enumerate(PAUSES)
        ]
        deadline = time.monotonic() + RUN_FOR
        threads = [
            threading.Thread(target=tab.run, args=(server.port, deadline), daemon=True)
            for tab in tabs
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(RUN_FOR + 30)
        assert not any(thread.is_alive() for thread in threads), "a tab did not finish"
        final = [tab.request(server.port, "GET", "/tab/read") for tab in tabs]
        log = server.log()
    app = create_app(
        SECRET_KEY=secret_key,
        **{
            k: json.loads(v) if k.startswith("SERVERSESSION_ROTATE") else v
            for k, v in rotating.items()
        },
    )
    with app.app_context():
        store = store_of(app)
        figures = Figures(live_sessions=store.count())
        given = {store.tokens.parse(token)[:2] for tab in tabs for token in tab.tokens}
        first = store.sid_from(signed_in.cookie)
        store.backend.close()
    # A rotation changes the secret, never the id: one session all along.
    if {sid for sid, _secret in given} != {first}:
        problems.append("a token given names another session than the one signed in")
    figures.rotations = len({secret for _sid, secret in given if secret is not None})
    for tab in tabs:
        figures.requests += tab.requests
        figures.sign_outs += tab.sign_outs
        figures.stale_reads += tab.stale_reads
        figures.failures += len(tab.failures)
        problems.extend(tab.failures[:3])
    for lists in final:
        if lists is None:
            problems.append("a final read found no session")
            continue
        for tab in tabs:
            stored = lists.get(f"tab-{tab.name}", [])
            figures.lost_writes += len(set(tab.acked) - set(stored))
            figures.duplicated_writes += len(stored) - len(set(stored))
            if sorted(set(stored) - set(tab.acked)):
                problems.append(f"tab {tab.name}: unacknowledged appends stored")
    if problems:
        problems.append(log)
    return figures, problems


def check(request: pytest.FixtureRequest, name: str, figures: Figures, problems: list[str]) -> None:
    print(f"\n{figures.line(name)}")
    request.node.user_properties.append(("figures", figures.line(name)))
    assert problems == [], "\n".join(problems)
    assert figures.sign_outs == 0, figures
    assert figures.lost_writes == 0, figures
    assert figures.duplicated_writes == 0, figures
    assert figures.stale_reads == 0, figures
    assert figures.failures == 0, figures
    assert figures.live_sessions == 1, figures
    # Real time: RUN_FOR seconds at one rotation a second, less a slow start.
    assert figures.rotations >= RUN_FOR / EVERY / 2, figures


def test_tabs_on_redis(
    tmp_path: Path,
    make_redis_server: t.Callable[..., RedisServer],
    request: pytest.FixtureRequest,
) -> None:
    redis = make_redis_server()
    config = {"SERVERSESSION_BACKEND": "redis", "SERVERSESSION_REDIS_URL": redis.url}
    check(request, "rotation tabs, redis", *run_tabs(tmp_path, config))


def test_tabs_on_postgres(
    tmp_path: Path, postgres_url: str, request: pytest.FixtureRequest
) -> None:
    config = {
        "SERVERSESSION_BACKEND": "sqlalchemy",
        "SERVERSESSION_SQLALCHEMY_URI": postgres_url,
        "SERVERSESSION_SQLALCHEMY_TABLE": "rotation_tabs",
    }
    check(request, "rotation tabs, postgres", *run_tabs(tmp_path, config))


@pytest.mark.parametrize("backend", ["sqlite", "filesystem"])
def test_tabs_on_local_stores(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if backend == "sqlite":
        config = {
            "SERVERSESSION_BACKEND": "sqlalchemy",
            "SERVERSESSION_SQLALCHEMY_URI": f"sqlite:///{tmp_path / 'sessions.sqlite'}",
        }
    else:
        config = {
            "SERVERSESSION_BACKEND": "filesystem",
            "SERVERSESSION_FILE_DIR": str(tmp_path / "sessions"),
        }
    check(request, f"rotation tabs, {backend}", *run_tabs(tmp_path, config))


def test_tabs_with_slow_writes(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # Every create and every rotation's write takes 60 ms more: no request
    # meets a rotation half done, so none is signed out.
    config = {
        "SERVERSESSION_BACKEND": "sqlalchemy",
        "SERVERSESSION_SQLALCHEMY_URI": f"sqlite:///{tmp_path / 'sessions.sqlite'}",
    }
    figures, problems = run_tabs(tmp_path, config, slow_writes_ms=60)
    check(request, "rotation tabs, sqlite, writes slowed by 60 ms", figures, problems)
