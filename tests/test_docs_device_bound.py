"""The examples of docs/device_bound.rst, run as the page shows them."""

from __future__ import annotations

import logging
import time
import typing as t

import pytest
from flask import Flask
from flask import session
from flask_wtf.csrf import CSRFProtect

from flask_serversession import ServerSession
from flask_serversession import signals

from .support.dbsc_client import DbscBrowser
from .support.dbsc_client import HTTPS


def make(tmp_path: t.Any, **config: t.Any) -> Flask:
    app = Flask("docs_device_bound", instance_path=str(tmp_path / "instance"))
    app.config.update(SECRET_KEY="docs secret key", SERVERSESSION_BACKEND="memory", **config)
    app.config.update(
        SESSION_COOKIE_SECURE=True,
        SERVERSESSION_DEVICE_BOUND=True,
    )
    ServerSession(app)

    @app.post("/sign-in")
    def sign_in() -> str:
        session.regenerate()
        session["user"] = "ada"
        return "signed in"

    @app.get("/whoami")
    def whoami() -> str:
        return str(session.get("user"))

    return app


def test_turning_it_on_offers_and_binds(tmp_path: t.Any) -> None:
    app = make(tmp_path)
    browser = DbscBrowser(app.test_client())
    signed_in = browser.client.post("/sign-in", base_url=HTTPS)
    assert signed_in.headers["Secure-Session-Registration"].startswith(
        '(ES256 RS256);path="/_serversession/dbsc/register";challenge="'
    )
    answer = browser.register(signed_in)
    assert answer.get_json()["credentials"] == [
        {"type": "cookie", "name": "session-bound", "attributes": "Path=/; Secure; HttpOnly"}
    ]
    assert browser.client.get("/whoami", base_url=HTTPS).text == "ada"


def test_csrf_protect_with_the_blueprint_exempt(tmp_path: t.Any) -> None:
    app = make(tmp_path)
    csrf = CSRFProtect(app)
    csrf.exempt(app.blueprints["serversession_dbsc"])
    app.config["TESTING"] = False
    browser = DbscBrowser(app.test_client())
    # The sign-in view itself would need a CSRF token; an exempt one stands in for it.
    csrf.exempt(app.view_functions["sign_in"])
    assert browser.register(browser.client.post("/sign-in", base_url=HTTPS)).status_code == 200
    assert browser.refresh().status_code == 200


def test_binding_failures_are_logged(tmp_path: t.Any, caplog: pytest.LogCaptureFixture) -> None:
    app = make(tmp_path)

    @signals.session_binding_failed.connect_via(app)
    def binding_failed(sender: Flask, storage_key: str) -> None:
        app.logger.warning("bound session %s used without its bound cookie", storage_key[:12])

    browser = DbscBrowser(app.test_client())
    browser.register(browser.client.post("/sign-in", base_url=HTTPS))
    # Past the ten seconds after the binding in which a request without the
    # bound cookie still opens the session.
    signer = app.session_interface.devices.signer  # type: ignore[attr-defined]
    signer.clock = lambda: time.time() + 11
    thief = app.test_client()
    stolen = browser.client.get_cookie("session", domain="localhost")
    assert stolen is not None
    thief.set_cookie("session", stolen.value, domain="localhost")
    with caplog.at_level(logging.WARNING):
        assert thief.get("/whoami", base_url=HTTPS).text == "None"
    assert [r.getMessage()[:14] for r in caplog.records] == ["bound session "]
    assert "used without its bound cookie" in caplog.records[0].getMessage()
