"""Flask's session protocol as code written for Flask's own session relies on it."""

from __future__ import annotations

import copy
import pickle
import typing as t
from datetime import timedelta

import pytest
from flask import Flask
from flask import request
from flask import session
from flask.testing import FlaskClient
from werkzeug.http import parse_date

from flask_serversession import ServerSession
from flask_serversession.backends.base import Backend

from .conftest import Clock
from .conftest import session_cookie
from .conftest import store_of

CLOSED_PORT_URI = "postgresql+psycopg://nobody@127.0.0.1:9/nothing"


def set_cookie_header(response: t.Any, name: str = "session") -> str | None:
    for header in response.headers.getlist("Set-Cookie"):
        if header.startswith(f"{name}="):
            return t.cast(str, header)
    return None


def cookie_expires(header: str) -> t.Any:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "expires":
            return parse_date(value)
    return None


def add_permanence_views(app: Flask) -> None:
    @app.post("/permanent/<int:on>")
    def make_permanent(on: int) -> str:
        session.permanent = bool(on)
        return "ok"


# session.permanent


def test_permanent_is_false_by_default_as_in_flask(make_app: t.Callable[..., Flask]) -> None:
    client = make_app().test_client()
    response = client.post("/set", json={"user": "alice"})
    header = set_cookie_header(response)
    assert header is not None and cookie_expires(header) is None
    assert client.get("/meta").json["permanent"] is False


def test_changing_permanent_resends_the_cookie(backend_app: Flask) -> None:
    clock = Clock()
    store_of(backend_app).clock = clock
    add_permanence_views(backend_app)
    client = backend_app.test_client()
    client.post("/set", json={"user": "alice"})
    token = session_cookie(client)

    remembered = set_cookie_header(client.post("/permanent/1"))
    assert remembered is not None, "remember me must reach the browser"
    assert session_cookie(client) == token
    assert cookie_expires(remembered) == clock.now + timedelta(hours=24)

    forgotten = set_cookie_header(client.post("/permanent/0"))
    assert forgotten is not None, "a persistent cookie must not stay behind"
    assert session_cookie(client) == token
    assert cookie_expires(forgotten) is None
    assert client.get("/get/user").json == {"value": "alice"}


def test_unchanged_permanent_sends_no_cookie(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(SERVERSESSION_PERMANENT=True)
    add_permanence_views(app)
    client = app.test_client()
    client.post("/set", json={"user": "alice"})
    assert set_cookie_header(client.post("/permanent/1")) is None


def test_permanence_flag_alone_stores_nothing(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = make_app(backend)

    @app.before_request
    def make_sessions_permanent() -> None:
        session.permanent = True

    client = app.test_client()
    for _ in range(3):
        response = client.get("/untouched")
        assert set_cookie_header(response) is None
    assert client.get("/dump").json == {"_permanent": True}
    with app.app_context():
        assert store_of(app).count() == 0

    response = client.post("/set", json={"user": "alice"})
    header = set_cookie_header(response)
    assert header is not None and cookie_expires(header) is not None
    with app.app_context():
        assert store_of(app).count() == 1


# session.modified


def test_modified_sees_nested_changes(make_app: t.Callable[..., Flask]) -> None:
    app = make_app()

    @app.post("/nested")
    def nested() -> t.Any:
        before = session.modified
        session["items"].append(request.get_json())
        return {"before": before, "after": session.modified}

    @app.get("/read-only")
    def read_only() -> t.Any:
        session.get("items")
        return {"modified": session.modified}

    client = app.test_client()
    client.post("/set", json={"items": []})
    assert client.get("/read-only").json == {"modified": False}
    assert client.post("/nested", json=1).json == {"before": False, "after": True}
    assert client.get("/get/items").json == {"value": [1]}


def test_modified_can_still_be_set_by_hand(make_app: t.Callable[..., Flask]) -> None:
    app = make_app()

    @app.get("/flag")
    def flag() -> t.Any:
        session.get("a")
        session.modified = True
        return {"modified": session.modified}

    assert app.test_client().get("/flag").json == {"modified": True}


# copies


def test_copies_and_pickles_are_plain_dicts(make_app: t.Callable[..., Flask]) -> None:
    app = make_app()

    @app.get("/copies")
    def copies() -> t.Any:
        deep = copy.deepcopy(session)
        shallow = copy.copy(session)
        # The session object itself; werkzeug's proxy is never picklable.
        pickled = pickle.loads(pickle.dumps(session._get_current_object()))  # type: ignore[attr-defined]
        deep["cart"].append("changed in the copy")
        return {
            "types": [type(c).__name__ for c in (deep, shallow, pickled)],
            "pickled": pickled,
            "session": dict(session),
        }

    client = app.test_client()
    client.post("/set", json={"cart": ["tea"]})
    result = client.get("/copies").json
    assert result["types"] == ["dict", "dict", "dict"]
    assert result["pickled"] == {"cart": ["tea"]}
    assert result["session"] == {"cart": ["tea"]}


# Flask's lifetime key


def test_permanent_session_lifetime_is_the_lifetime(make_app: t.Callable[..., Flask]) -> None:
    clock = Clock()
    app = make_app(PERMANENT_SESSION_LIFETIME=timedelta(minutes=30))
    store_of(app).clock = clock
    client = app.test_client()
    client.post("/set", json={"a": 1})
    assert client.get("/meta").json["expires_at"] == (clock.now + timedelta(minutes=30)).isoformat()
    clock.advance(minutes=31)
    assert client.get("/dump").json == {}


def test_both_lifetimes_set_warns(tmp_path: t.Any) -> None:
    app = Flask("tests", instance_path=str(tmp_path))
    app.config.update(
        SECRET_KEY="k",
        SERVERSESSION_BACKEND="memory",
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=30),
        SERVERSESSION_EXPIRE_TIME=timedelta(hours=2),
    )
    with pytest.warns(UserWarning, match="PERMANENT_SESSION_LIFETIME"):
        ServerSession(app)
    assert store_of(app).settings.expire_time == timedelta(hours=2)


# signing keys


def test_keys_rotated_after_init_app_take_effect(make_app: t.Callable[..., Flask]) -> None:
    app = make_app()
    client = app.test_client()
    client.post("/set", json={"user": "alice"})
    old_token = session_cookie(client)

    app.config["SECRET_KEY"] = "a new key"
    app.config["SECRET_KEY_FALLBACKS"] = ["test secret key"]
    assert client.get("/get/user").json == {"value": "alice"}
    client.post("/regenerate")
    new_token = session_cookie(client)
    assert new_token and new_token != old_token
    with app.test_request_context():
        assert store_of(app).sid_from(new_token) is not None

    app.config["SECRET_KEY_FALLBACKS"] = []
    stale = app.test_client()
    stale.set_cookie("session", t.cast(str, old_token))
    assert stale.get("/dump").json == {}
    assert client.get("/get/user").json == {"value": "alice"}


# a failed save


def test_failed_save_keeps_cors_and_vary_headers(make_app: t.Callable[..., Flask]) -> None:
    app = make_app("sqlalchemy", SERVERSESSION_SQLALCHEMY_URI=CLOSED_PORT_URI)

    @app.post("/login")
    def login() -> t.Any:
        session["user"] = "alice"
        response = app.redirect("/welcome")
        response.headers["Access-Control-Allow-Origin"] = "https://app.example"
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.vary.add("Origin")
        response.set_cookie("remember_token", "would sign the user in")
        return response

    client: FlaskClient = app.test_client()
    response = client.post("/login")
    assert response.status_code == 503
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert {"Origin", "Cookie"} <= set(response.vary)
    assert "Location" not in response.headers
    assert "Set-Cookie" not in response.headers
    assert response.mimetype == "text/html"
