"""Flask-WTF's CSRFProtect on a server-side session, over every backend (docs: extensions.rst)."""

from __future__ import annotations

import re
import typing as t

from flask import Flask
from flask import render_template_string
from flask import request
from flask import session
from flask.testing import FlaskClient
from flask_wtf.csrf import CSRFProtect

from flask_serversession.backends.base import Backend

from .conftest import session_cookie
from .conftest import store_of

# docs/extensions.rst, "Flask-WTF"
COMMENT_FORM = """
<form method="post">
  <input type="hidden" name="csrf_token" value="{{ csrf_token() }}">
  <textarea name="text"></textarea>
  <button>Post</button>
</form>
"""

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def add_csrf(app: Flask) -> CSRFProtect:
    """CSRFProtect and a form, as in the docs page, plus a sign-in that regenerates."""
    csrf = CSRFProtect(app)

    @app.route("/comment", methods=["GET", "POST"])
    def comment() -> str:
        if request.method == "POST":
            return "Posted."
        return render_template_string(COMMENT_FORM)

    @app.post("/login")
    def login() -> str:
        session.regenerate()
        session["user"] = request.form["username"]
        return "Signed in."

    return csrf


def form_token(client: FlaskClient) -> str:
    match = CSRF_INPUT.search(client.get("/comment").text)
    assert match is not None
    return match.group(1)


def stored_csrf_secrets(app: Flask) -> list[str]:
    return [data["csrf_token"] for _, data in store_of(app).items()]


def test_csrf_secret_lives_in_the_stored_session(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = make_app(backend)
    add_csrf(app)
    client = app.test_client()

    token = form_token(client)

    cookie = session_cookie(client)
    assert cookie is not None
    (secret,) = stored_csrf_secrets(app)
    assert secret not in cookie
    assert client.post("/comment", data={"csrf_token": token, "text": "hi"}).text == "Posted."
    assert client.post("/comment", data={"csrf_token": token}).status_code == 200


def test_posts_without_the_right_token_are_refused(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = make_app(backend)
    add_csrf(app)
    client = app.test_client()
    token = form_token(client)
    other = app.test_client()
    other_token = form_token(other)

    assert client.post("/comment", data={"text": "hi"}).status_code == 400
    assert client.post("/comment", data={"csrf_token": "forged"}).status_code == 400
    refused = client.post("/comment", data={"csrf_token": other_token})
    assert refused.status_code == 400
    assert "do not match" in refused.text
    # A refused post costs the visitor nothing: the right token still works.
    assert client.post("/comment", data={"csrf_token": token}).text == "Posted."

    # A visitor without a session is refused without a session being stored.
    stranger = app.test_client()
    assert stranger.post("/comment", data={"csrf_token": token}).status_code == 400
    assert session_cookie(stranger) is None
    assert store_of(app).count() == 2


def test_csrf_token_survives_requests_and_regenerate(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = make_app(backend)
    add_csrf(app)
    client = app.test_client()
    first = form_token(client)
    client.get("/untouched")
    client.get("/get/anything")
    second = form_token(client)
    (secret,) = stored_csrf_secrets(app)
    before_login = session_cookie(client)

    response = client.post("/login", data={"csrf_token": second, "username": "alice"})
    assert response.text == "Signed in."

    assert session_cookie(client) != before_login
    assert stored_csrf_secrets(app) == [secret]
    assert client.post("/comment", data={"csrf_token": first}).text == "Posted."
    assert client.post("/comment", headers={"X-CSRFToken": second}).text == "Posted."
    assert client.get("/get/user").json == {"value": "alice"}
