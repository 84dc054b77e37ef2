from __future__ import annotations

import importlib.util
import logging
import types
import typing as t
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_serversession import ServerSession

from .conftest import Clock
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


def test_the_health_check_reads_one_session_of_its_own(make_app: t.Callable[..., Flask]) -> None:
    example = monitoring()
    app = make_app()
    example.add_health_check(app, ServerSession())
    clock = Clock()
    store_of(app).clock = clock
    client = app.test_client(use_cookies=False)
    for _ in range(3):
        response = client.get("/healthz")
        assert response.status_code == 200
        assert response.json is not None and response.json["status"] == "ok"
        assert response.json["store_ms"] >= 0
        assert "Set-Cookie" not in response.headers
    with app.app_context():
        assert ServerSession().count() == 1
    clock.advance(hours=25)
    assert client.get("/healthz").status_code == 200
    with app.app_context():
        assert ServerSession().count() == 1  # a new probe session; the old one expired

    down = make_app("sqlalchemy", SERVERSESSION_SQLALCHEMY_URI=CLOSED_PORT_URI)
    example.add_health_check(down, ServerSession())
    assert down.test_client().get("/healthz").status_code == 503


def test_the_page_points_to_the_built_in_metrics() -> None:
    page = (ROOT / "docs" / "production.rst").read_text(encoding="utf-8")
    assert "prometheus_client import" not in page
    assert ":data:`SERVERSESSION_METRICS`" in page and ":doc:`monitoring`" in page
