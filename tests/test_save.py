from __future__ import annotations

import typing as t
import uuid
from datetime import date
from datetime import datetime
from datetime import timezone
from decimal import Decimal

import pytest
from flask import flash
from flask import Flask
from flask import get_flashed_messages
from flask import session
from markupsafe import Markup

from flask_serversession import ServerSession
from flask_serversession import SessionTooLargeError


def test_tagged_types_round_trip(app: Flask) -> None:
    values = {
        "tuple": (1, "two"),
        "bytes": b"\x00\xff",
        "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "markup": Markup("<b>bold</b>"),
        "nested": {"list": [1, 2.5, None, True], "deeper": [(b"x", {" t": ["tag-like"]})]},
        "tag-like key": {" di": {" t": 1}},
    }

    @app.post("/store")
    def store() -> str:
        session.update(values)
        return "stored"

    @app.get("/check")
    def check() -> str:
        assert dict(session) == values
        assert type(session["markup"]) is Markup
        return "same"

    client = app.test_client()
    client.post("/store")
    assert client.get("/check").text == "same"


@pytest.mark.parametrize("value", [{1, 2}, Decimal("1.10"), date(2026, 1, 2), object()], ids=repr)
def test_values_that_would_not_round_trip_are_refused(app: Flask, value: t.Any) -> None:
    @app.post("/lossy")
    def lossy() -> str:
        session["value"] = value
        return "never saved"

    with pytest.raises(TypeError, match="'value' holds a"):
        app.test_client().post("/lossy")


def test_unserializable_value_is_refused_and_nothing_saved(app: Flask) -> None:
    @app.post("/bad")
    def bad() -> str:
        session["a"] = 2
        session["tags"] = {"a", "b"}
        return "never saved"

    client = app.test_client()
    client.post("/set", json={"a": 1})
    with pytest.raises(TypeError, match="'tags' holds a set"):
        client.post("/bad")
    assert client.get("/dump").json == {"a": 1}


def test_oversize_save_raises_and_keeps_previous_data(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(SERVERSESSION_MAX_SIZE=1000)
    client = app.test_client()
    client.post("/set", json={"a": "x" * 400})
    with pytest.raises(SessionTooLargeError, match="SERVERSESSION_MAX_SIZE"):
        client.post("/set", json={"b": "y" * 700})
    assert client.get("/dump").json == {"a": "x" * 400}


def test_oversize_new_session_creates_nothing(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(SERVERSESSION_MAX_SIZE=100)
    client = app.test_client()
    with pytest.raises(SessionTooLargeError):
        client.post("/set", json={"a": "x" * 200})
    with app.app_context():
        assert ServerSession().count() == 0


def test_oversize_programmatic_calls_raise(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(SERVERSESSION_MAX_SIZE=100)
    extension = ServerSession()
    with app.app_context():
        with pytest.raises(SessionTooLargeError):
            extension.create({"a": "x" * 200})
        token = extension.create({"a": 1})
        with pytest.raises(SessionTooLargeError):
            extension.update(token, {"a": "x" * 200})
        assert extension.get(token) == {"a": 1}


def test_flash_messages_survive_a_redirect(app: Flask) -> None:
    @app.post("/flash")
    def add_flash() -> str:
        flash("saved")
        return "flashed"

    @app.get("/show")
    def show() -> str:
        return ",".join(get_flashed_messages())

    client = app.test_client()
    client.post("/flash")
    assert client.get("/show").text == "saved"
    assert client.get("/show").text == ""
