"""The contenders: one Flask app per session implementation and backend."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import time
import typing as t
from dataclasses import dataclass
from dataclasses import field

from flask import Flask
from flask import jsonify
from flask import session
from werkzeug.test import EnvironBuilder

SECRET_KEY = "benchmark-secret-key-0123456789abcdef"
COOKIE_NAME = "session"

#: A typical signed-in session: about 300 bytes of tagged JSON.
SEED: dict[str, t.Any] = {
    "user_id": 123,
    "name": "Ada Lovelace",
    "csrf_token": "5f0c1e9a2b7d4c8e9f1a3b5c7d9e0f2a4b6c8d0e1f3a5b7c9d1e3f5a7b9c1d3e",
    "roles": ["admin", "editor"],
    "cart": [{"sku": "A-100", "qty": 2}, {"sku": "B-200", "qty": 1}],
    "locale": "en_GB",
    "counter": 0,
}

#: Flask-ServerSession backends, by benchmark name: (module, SERVERSESSION_BACKEND).
SERVERSESSION_BACKENDS = {
    "memory": ("memory", "memory"),
    "filesystem": ("filesystem", "filesystem"),
    "sqlite": ("sqlalchemy", "sqlalchemy"),
    "postgres": ("sqlalchemy", "sqlalchemy"),
    "redis": ("redis", "redis"),
}

#: Flask-Session 0.8 backends matching ours, by benchmark name; its "memory" is
#: cachelib's SimpleCache, a dict in the process, as our memory backend.
FLASK_SESSION_BACKENDS = ("memory", "filesystem", "sqlite", "postgres", "redis")

FAMILY_LABELS = {"cookie": "Flask cookie", "fss": "ServerSession", "fs": "Flask-Session"}


@dataclass(frozen=True)
class Spec:
    """How to build one contender's app; plain data, so a server process can rebuild it.

    :param family: ``"cookie"`` (Flask's own), ``"fss"`` (Flask-ServerSession)
        or ``"fs"`` (Flask-Session 0.8).
    :param backend: ``"cookie"``, ``"memory"``, ``"filesystem"``, ``"sqlite"``,
        ``"postgres"`` or ``"redis"``.
    :param location: directory, database URL or Redis URL.
    :param table: SQL table name or Redis key prefix.
    """

    family: str
    backend: str
    location: str = ""
    table: str = ""
    extra: dict[str, t.Any] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        if self.family == "cookie":
            return "Flask cookie session"
        name = f"{FAMILY_LABELS[self.family]} {self.backend}"
        return f"{name} ({self.extra['n']:,})" if "n" in self.extra else name

    def to_json(self) -> str:
        # Settings in ``extra`` travel too (encryption.py's key); other extras stay here.
        settings = {k: v for k, v in self.extra.items() if k.startswith("SERVERSESSION_")}
        return json.dumps(
            {"family": self.family, "backend": self.backend, "location": self.location,
             "table": self.table, **({"extra": settings} if settings else {})}
        )  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> Spec:
        return cls(**json.loads(text))


def module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def serversession_has(backend: str) -> bool:
    module = SERVERSESSION_BACKENDS[backend][0]
    return module_available(f"flask_serversession.backends.{module}")


def flask_session_installed() -> bool:
    return module_available("flask_session")


def add_routes(app: Flask) -> None:
    counter = itertools.count(1)

    @app.get("/untouched")
    def untouched() -> str:
        return "ok"

    @app.get("/read")
    def read() -> str:
        return str(session.get("user_id"))

    @app.get("/write")
    def write() -> str:
        session["counter"] = next(counter)
        return "ok"

    @app.get("/new")
    def new() -> str:
        session["user_id"] = 1
        return "ok"

    @app.get("/seed")
    def seed() -> str:
        session.update(SEED)
        return "ok"

    @app.get("/incr/<int:client>")
    def incr(client: int) -> str:
        key = f"c{client}"
        session[key] = session.get(key, 0) + 1
        return "ok"

    @app.get("/dump")
    def dump() -> t.Any:
        return jsonify({key: session[key] for key in session})


def _configure_serversession(app: Flask, spec: Spec) -> None:
    from flask_serversession import ServerSession

    config = app.config
    config["SERVERSESSION_BACKEND"] = SERVERSESSION_BACKENDS[spec.backend][1]
    if spec.backend == "filesystem":
        config["SERVERSESSION_FILE_DIR"] = spec.location
    elif spec.backend in ("sqlite", "postgres"):
        config["SERVERSESSION_SQLALCHEMY_URI"] = spec.location
        config["SERVERSESSION_SQLALCHEMY_TABLE"] = spec.table or "serversession"
    elif spec.backend == "redis":
        config["SERVERSESSION_REDIS_URL"] = spec.location
        config["SERVERSESSION_KEY_PREFIX"] = spec.table or "serversession:"
    elif spec.backend == "memory":
        config["SERVERSESSION_MEMORY_MAX_ENTRIES"] = 1_000_000
    config.update(spec.extra)
    # BENCH_METRICS=prometheus (or opentelemetry) counts a request with metrics on.
    if os.environ.get("BENCH_METRICS"):
        config["SERVERSESSION_METRICS"] = os.environ["BENCH_METRICS"]
    ServerSession(app)


def _configure_flask_session(app: Flask, spec: Spec) -> None:
    from flask_session import Session

    config = app.config
    if spec.backend == "memory":
        from cachelib.simple import SimpleCache

        config["SESSION_TYPE"] = "cachelib"
        config["SESSION_CACHELIB"] = SimpleCache()
    elif spec.backend == "filesystem":
        from cachelib.file import FileSystemCache

        config["SESSION_TYPE"] = "cachelib"
        # The setting Flask-Session's documentation shows.
        config["SESSION_CACHELIB"] = FileSystemCache(spec.location, threshold=500)
    elif spec.backend in ("sqlite", "postgres"):
        from flask_sqlalchemy import SQLAlchemy

        config["SQLALCHEMY_DATABASE_URI"] = spec.location
        config["SESSION_TYPE"] = "sqlalchemy"
        config["SESSION_SQLALCHEMY"] = SQLAlchemy(app)
        config["SESSION_SQLALCHEMY_TABLE"] = spec.table or "sessions"
    elif spec.backend == "redis":
        import redis

        config["SESSION_TYPE"] = "redis"
        config["SESSION_REDIS"] = redis.Redis.from_url(spec.location)
        config["SESSION_KEY_PREFIX"] = spec.table or "session:"
    else:
        raise ValueError(f"Flask-Session has no benchmark backend {spec.backend!r}")
    config.update(spec.extra)
    Session(app)


def build_app(spec: Spec) -> Flask:
    """Return a Flask app with the benchmark routes and ``spec``'s sessions."""
    app = Flask(f"bench_{spec.family}_{spec.backend}")
    app.secret_key = SECRET_KEY
    add_routes(app)
    if spec.family == "fss":
        _configure_serversession(app, spec)
    elif spec.family == "fs":
        _configure_flask_session(app, spec)
    return app


def _start_response(status: str, headers: t.Any, exc_info: t.Any = None) -> None:
    return None


def make_environ(path: str, cookie: str | None = None) -> dict[str, t.Any]:
    headers = {"Cookie": f"{COOKIE_NAME}={cookie}"} if cookie else {}
    return EnvironBuilder(path=path, headers=headers).get_environ()


def call(app: Flask, environ: dict[str, t.Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """Call the WSGI app once; return status, headers and body."""
    seen: dict[str, t.Any] = {}

    def start_response(status: str, headers: t.Any, exc_info: t.Any = None) -> None:
        seen["status"], seen["headers"] = status, headers

    result = app(dict(environ), start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return seen["status"], seen["headers"], body


def session_cookie(headers: t.Sequence[tuple[str, str]]) -> str | None:
    for name, value in headers:
        if name.lower() == "set-cookie" and value.startswith(f"{COOKIE_NAME}="):
            return value.split(";", 1)[0].split("=", 1)[1] or None
    return None


def seed_session(app: Flask) -> str:
    """Create the seed session through the app; return its cookie value."""
    status, headers, _ = call(app, make_environ("/seed"))
    cookie = session_cookie(headers)
    if not status.startswith("200") or cookie is None:
        raise RuntimeError(f"seeding a session failed: {status}")
    status, _, body = call(app, make_environ("/read", cookie))
    if body != b"123":
        raise RuntimeError(f"the seeded session reads back {body!r} ({status})")
    return cookie


def batch(app: Flask, environ: dict[str, t.Any]) -> t.Callable[[int], float]:
    """Return a function that calls the WSGI app ``n`` times and returns the seconds."""
    start_response = _start_response

    def run(n: int) -> float:
        clock = time.perf_counter
        start = clock()
        for _ in range(n):
            result = app(environ.copy(), start_response)
            for _chunk in result:
                pass
            result.close()
        return clock() - start

    return run


def check_ok(app: Flask, environ: dict[str, t.Any]) -> None:
    status, _, body = call(app, environ)
    if not status.startswith("200"):
        raise RuntimeError(f"{environ['PATH_INFO']} answered {status}: {body[:200]!r}")


def close_app(app: Flask) -> None:
    """Release connections the app's sessions hold."""
    store = app.extensions.get("serversession")
    if store is not None:
        store.backend.close()
    db = app.extensions.get("sqlalchemy")
    if db is not None:
        with app.app_context():
            for engine in db.engines.values():
                engine.dispose()
    interface = app.session_interface
    client = getattr(interface, "client", None)
    if client is not None and hasattr(client, "close") and db is None:
        client.close()
