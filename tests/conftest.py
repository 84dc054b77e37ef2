from __future__ import annotations

import itertools
import os
import typing as t
from collections import Counter
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest
from flask import Flask
from flask import jsonify
from flask import request
from flask import session
from flask.testing import FlaskClient

from flask_serversession import ServerSession
from flask_serversession.backends.base import Backend
from flask_serversession.backends.base import Delta
from flask_serversession.backends.base import Record
from flask_serversession.backends.filesystem import FileSystemBackend
from flask_serversession.backends.memory import MemoryBackend
from flask_serversession.store import SessionStore

from .support.postgres import make_postgres  # noqa: F401
from .support.postgres import postgres_url  # noqa: F401
from .support.redis_servers import CLIENT_LIBRARIES
from .support.redis_servers import make_redis_server  # noqa: F401
from .support.redis_servers import redis_backend  # noqa: F401
from .support.redis_servers import redis_cluster  # noqa: F401
from .support.redis_servers import redis_cluster_backend  # noqa: F401
from .support.redis_servers import redis_library  # noqa: F401
from .support.redis_servers import redis_sentinel  # noqa: F401
from .support.redis_servers import redis_server  # noqa: F401
from .support.redis_servers import valkey_backend  # noqa: F401
from .support.redis_servers import valkey_cluster_backend  # noqa: F401
from .support.rotation_events import events  # noqa: F401
from .support.sql import fsa_postgres_backend  # noqa: F401
from .support.sql import fsa_sqlite_backend  # noqa: F401
from .support.sql import postgres_backend  # noqa: F401
from .support.sql import sqlite_backend  # noqa: F401

IN_CI = bool(os.environ.get("CI"))

_FIGURES: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _FIGURES.extend(str(v) for k, v in report.user_properties if k == "figures")


def pytest_terminal_summary(terminalreporter: t.Any) -> None:
    """Print the figures that fuzz and fault tests record, so CI logs show them."""
    if _FIGURES:
        terminalreporter.section("figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test that uses ``redis_library`` with redis-py and with valkey-py."""
    if "redis_library" in metafunc.fixturenames:
        ids = [f"{name}-py" for name in CLIENT_LIBRARIES]
        metafunc.parametrize("redis_library", CLIENT_LIBRARIES, indirect=True, ids=ids)


def server_unavailable(reason: str) -> t.NoReturn:
    """Fail in CI, where every server must run; skip loudly elsewhere."""
    message = f"SERVER UNAVAILABLE: {reason}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


#: Every backend variant that the contract suite runs against. Each name
#: ``x`` has a fixture ``x_backend`` that yields a fresh, empty backend.
BACKENDS = [
    "memory",
    "redis",
    "redis_cluster",
    "valkey",
    "valkey_cluster",
    "sqlite",
    "postgres",
    "fsa_sqlite",
    "fsa_postgres",
    "filesystem",
]

#: Backends whose store drops expired records by itself.
NATIVE_EXPIRY = {"redis", "redis_cluster", "valkey", "valkey_cluster"}


@pytest.fixture
def memory_backend() -> t.Iterator[Backend]:
    backend = MemoryBackend()
    yield backend
    backend.close()


@pytest.fixture
def filesystem_backend(tmp_path: t.Any) -> t.Iterator[Backend]:
    backend = FileSystemBackend(tmp_path / "filesystem-sessions")
    yield backend
    backend.close()


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return t.cast(str, request.param)


@pytest.fixture
def backend(request: pytest.FixtureRequest, backend_name: str) -> Backend:
    return t.cast(Backend, request.getfixturevalue(f"{backend_name}_backend"))


class CountingBackend(MemoryBackend):
    """A real memory backend that also counts the calls made to it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()
        self.deltas: list[Delta] = []

    def load(self, key: str) -> Record | None:
        self.calls["load"] += 1
        return super().load(key)

    def create(self, key: str, record: Record) -> None:
        self.calls["create"] += 1
        super().create(key, record)

    def update(self, key: str, delta: Delta, now: datetime) -> bool:
        self.calls["update"] += 1
        self.deltas.append(delta)
        return super().update(key, delta, now)

    def touch(self, key: str, expires_at: datetime, now: datetime) -> bool:
        self.calls["touch"] += 1
        return super().touch(key, expires_at, now)

    def delete(self, key: str) -> None:
        self.calls["delete"] += 1
        super().delete(key)


class Clock:
    """A clock the tests move by hand, installed as a store's ``clock``."""

    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


def add_views(app: Flask) -> None:
    """Views that do one session operation each, for driving tests over HTTP."""

    @app.get("/untouched")
    def untouched() -> str:
        return "untouched"

    @app.get("/get/<key>")
    def get(key: str) -> t.Any:
        return jsonify(value=session.get(key))

    @app.get("/dump")
    def dump() -> t.Any:
        return jsonify(dict(session))

    @app.post("/set")
    def set_values() -> str:
        session.update(request.get_json())
        return "set"

    @app.post("/delete/<key>")
    def delete(key: str) -> str:
        session.pop(key, None)
        return "deleted"

    @app.post("/append/<key>")
    def append(key: str) -> str:
        session.setdefault(key, []).append(request.get_json())
        return "appended"

    @app.post("/regenerate")
    def regenerate() -> str:
        session.regenerate()
        return "regenerated"

    @app.post("/destroy")
    def destroy() -> str:
        session.destroy()
        return "destroyed"

    @app.post("/renew")
    def renew() -> str:
        session.renew()
        return "renewed"

    @app.get("/meta")
    def meta() -> t.Any:
        created, expires = session.created_at, session.expires_at
        return jsonify(
            new=session.new,
            permanent=session.permanent,
            created_at=created and created.isoformat(),
            expires_at=expires and expires.isoformat(),
        )


@pytest.fixture
def make_app(tmp_path: t.Any) -> t.Callable[..., Flask]:
    """Return a factory of test apps: ``make_app(backend="memory", **config)``."""
    counter = itertools.count()

    def make(backend: Backend | str = "memory", **config: t.Any) -> Flask:
        app = Flask("tests", instance_path=str(tmp_path / f"instance-{next(counter)}"))
        app.config.update(TESTING=True, SECRET_KEY="test secret key", SERVERSESSION_BACKEND=backend)
        app.config.update(config)
        ServerSession(app)
        add_views(app)
        return app

    return make


@pytest.fixture
def app(make_app: t.Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def backend_app(make_app: t.Callable[..., Flask], backend: Backend) -> Flask:
    return make_app(backend)


def store_of(app: Flask) -> SessionStore:
    return t.cast(SessionStore, app.extensions["serversession"])


def session_cookie(
    client: FlaskClient, name: str = "session", domain: str = "localhost"
) -> str | None:
    cookie = client.get_cookie(name, domain=domain)
    return None if cookie is None else cookie.value
