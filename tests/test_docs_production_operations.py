from __future__ import annotations

import importlib.util
import logging
import types
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from flask import session
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_serversession import ServerSession

from .conftest import Clock
from .conftest import session_cookie
from .conftest import store_of

ROOT = Path(__file__).resolve().parent.parent
CLOSED_PORT_URI = "postgresql+psycopg://nobody@127.0.0.1:9/nothing"

# docs/production.rst


def monitoring() -> types.ModuleType:
    """docs/examples/monitoring.py, which the page includes, imported as it is."""
    pytest.importorskip("prometheus_client")
    path = ROOT / "docs" / "examples" / "monitoring.py"
    spec = importlib.util.spec_from_file_location("docs_monitoring", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_proxy_fix_gives_the_clients_address(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(SERVERSESSION_USER_KEY="user", SERVERSESSION_TRACK_CLIENT=True)
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    client = app.test_client()
    # The client forges an entry; the proxy appends the address it saw.
    client.post(
        "/set",
        json={"user": "alice"},
        headers={"X-Forwarded-For": "198.51.100.66, 203.0.113.7"},
        environ_base={"REMOTE_ADDR": "10.0.0.2"},
    )
    with app.app_context():
        (info,) = ServerSession().user_sessions("alice")
    assert info.remote_addr == "203.0.113.7"


def test_the_logger_reports_a_failed_save(make_app: t.Callable[..., Flask]) -> None:
    app = make_app("sqlalchemy", SERVERSESSION_SQLALCHEMY_URI=CLOSED_PORT_URI)
    records: list[logging.LogRecord] = []
    app_handler = logging.Handler()
    app_handler.emit = records.append  # type: ignore[method-assign]
    app.logger.handlers[:] = [app_handler]
    package_logger = logging.getLogger("flask_serversession")
    try:
        package_logger.addHandler(app.logger.handlers[0])
        response = app.test_client().post("/set", json={"cart": ["tea"]})
    finally:
        package_logger.removeHandler(app_handler)
    assert response.status_code == 503
    assert [r.getMessage().split(":")[0] for r in records] == ["Saving the session failed"]
    assert records[0].levelno == logging.ERROR


def test_signals_and_503s_are_counted_into_prometheus(make_app: t.Callable[..., Flask]) -> None:
    from prometheus_client import CollectorRegistry

    example = monitoring()
    registry = CollectorRegistry()
    app = make_app()
    example.count_session_events(app, registry)
    clock = Clock()
    store_of(app).clock = clock

    def events(event: str) -> float:
        value = registry.get_sample_value("serversession_events_total", {"event": event})
        return value or 0.0

    client = app.test_client()
    client.post("/set", json={"cart": []})
    client.post("/regenerate")
    client.post("/set", json={"cart": ["tea"]})
    clock.advance(hours=25)
    client.get("/dump")
    other = app.test_client()
    other.post("/set", json={"a": 1})
    other.post("/destroy")
    counted = {event: events(event) for event in example.EVENTS}
    assert counted == {"created": 2, "regenerated": 1, "destroyed": 1, "expired": 1, "revoked": 0}
    assert registry.get_sample_value("serversession_unavailable_responses_total") == 0

    down = make_app("sqlalchemy", SERVERSESSION_SQLALCHEMY_URI=CLOSED_PORT_URI)
    example.count_session_events(down, registry := CollectorRegistry())
    assert down.test_client().post("/set", json={"a": 1}).status_code == 503
    assert registry.get_sample_value("serversession_unavailable_responses_total") == 1


def test_rejected_tokens_are_counted_by_reason(make_app: t.Callable[..., Flask]) -> None:
    from prometheus_client import CollectorRegistry

    example = monitoring()
    registry = CollectorRegistry()
    app = make_app()
    example.count_session_events(app, registry)
    client = app.test_client()
    client.post("/set", json={"a": 1})
    token = t.cast(str, session_cookie(client))
    client.post("/destroy")
    sid, signature = token.split(".")
    forged = sid + "." + ("A" if signature[0] != "A" else "B") + signature[1:]
    for cookie in ("not a token", forged, token):
        visitor = app.test_client()
        visitor.set_cookie("session", cookie)
        visitor.get("/dump")

    def rejected(reason: str) -> float | None:
        return registry.get_sample_value("serversession_tokens_rejected_total", {"reason": reason})

    assert [rejected(r) for r in ("malformed", "bad_signature", "unknown")] == [1, 1, 1]


def test_the_health_check_reads_one_session_of_its_own(make_app: t.Callable[..., Flask]) -> None:
    from prometheus_client import CollectorRegistry

    example = monitoring()
    registry = CollectorRegistry()
    app = make_app()
    example.count_session_events(app, registry)
    example.add_health_check(app, ServerSession(), registry)
    clock = Clock()
    store_of(app).clock = clock
    client = app.test_client(use_cookies=False)
    for _ in range(3):
        response = client.get("/healthz")
        assert response.status_code == 200
        assert response.json is not None and response.json["status"] == "ok"
        assert response.json["store_ms"] >= 0
        assert "Set-Cookie" not in response.headers
    created = {"event": "created"}
    assert registry.get_sample_value("serversession_events_total", created) == 1
    assert registry.get_sample_value("serversession_store_seconds_count") == 3
    clock.advance(hours=25)
    assert client.get("/healthz").status_code == 200
    assert registry.get_sample_value("serversession_events_total", created) == 2
    with app.app_context():
        assert ServerSession().count() == 1

    down = make_app("sqlalchemy", SERVERSESSION_SQLALCHEMY_URI=CLOSED_PORT_URI)
    example.count_session_events(down, registry := CollectorRegistry())
    example.add_health_check(down, ServerSession(), registry)
    assert down.test_client().get("/healthz").status_code == 503
    assert registry.get_sample_value("serversession_unavailable_responses_total") == 1
    assert registry.get_sample_value("serversession_store_seconds_count") == 0


def test_a_session_view_still_works_beside_the_metrics(make_app: t.Callable[..., Flask]) -> None:
    from prometheus_client import CollectorRegistry
    from prometheus_client import make_wsgi_app
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    example = monitoring()
    registry = CollectorRegistry()
    app = make_app()
    example.count_session_events(app, registry)
    app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, {"/metrics": make_wsgi_app(registry)}
    )

    @app.get("/visit")
    def visit() -> str:
        session["visits"] = session.get("visits", 0) + 1
        return str(session["visits"])

    client = app.test_client()
    assert client.get("/visit").text == "1"
    metrics = client.get("/metrics").text
    assert 'serversession_events_total{event="created"} 1.0' in metrics
