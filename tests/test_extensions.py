"""Testing an app that uses server-side sessions: Flask's test client and pytest-flask
(docs/testing.rst).

The other extensions of docs/extensions.rst have their own modules:
test_ext_login.py, test_ext_wtf.py and test_ext_socketio.py.
"""

from __future__ import annotations

import typing as t

import pytest
from flask import Flask
from flask import request
from flask import session
from flask.testing import FlaskClient

from flask_serversession import ServerSession
from flask_serversession.backends.base import Backend

from .conftest import store_of


def create_app(test_config: dict[str, t.Any] | None = None) -> Flask:
    """An app factory that takes its test configuration before ``init_app`` runs."""
    app = Flask(__name__)
    app.config["SECRET_KEY"] = "change me"
    if test_config is not None:
        app.config.update(test_config)
    ServerSession(app)

    @app.get("/cart")
    def show_cart() -> list[str]:
        return t.cast(list[str], session.get("cart", []))

    @app.post("/cart")
    def add_to_cart() -> list[str]:
        session.setdefault("cart", []).append(request.form["item"])
        return t.cast(list[str], session["cart"])

    @app.post("/logout")
    def logout() -> str:
        session.destroy()
        return "Signed out."

    return app


# pytest-flask's `client` fixture is `app.test_client()` of this fixture.
@pytest.fixture
def app(backend: Backend) -> Flask:
    return create_app({"TESTING": True, "SERVERSESSION_BACKEND": backend})


# docs/extensions.rst, "Testing"
def test_cart_shows_items(client: FlaskClient) -> None:
    with client.session_transaction() as session:
        session["cart"] = ["apple"]
    assert client.get("/cart").json == ["apple"]
    client.post("/cart", data={"item": "pear"})
    with client.session_transaction() as session:
        assert session["cart"] == ["apple", "pear"]


def test_session_transaction_writes_the_store(app: Flask, client: FlaskClient) -> None:
    with client.session_transaction() as sess:
        sess["cart"] = ["apple"]
    assert [data for _, data in store_of(app).items()] == [{"cart": ["apple"]}]

    with client.session_transaction() as sess:
        sess["cart"].append("pear")
    assert client.get("/cart").json == ["apple", "pear"]
    assert store_of(app).count() == 1

    client.post("/logout")
    with client.session_transaction() as sess:
        assert dict(sess) == {}
    assert store_of(app).count() == 0


def test_pytest_flask_client_keeps_its_session(client: FlaskClient) -> None:
    assert client.post("/cart", data={"item": "apple"}).json == ["apple"]
    assert client.post("/cart", data={"item": "pear"}).json == ["apple", "pear"]
    assert client.get("/cart").json == ["apple", "pear"]


def test_each_app_gets_its_own_memory_store() -> None:
    first = create_app({"TESTING": True, "SERVERSESSION_BACKEND": "memory"})
    second = create_app({"TESTING": True, "SERVERSESSION_BACKEND": "memory"})
    first.test_client().post("/cart", data={"item": "apple"})

    assert store_of(first).count() == 1
    assert store_of(second).count() == 0
