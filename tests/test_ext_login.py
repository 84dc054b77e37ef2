"""Flask-Login on a server-side session, over every backend (docs: extensions.rst)."""

from __future__ import annotations

import typing as t
from datetime import timedelta

import pytest
from flask import abort
from flask import Flask
from flask import request
from flask import session
from flask.testing import FlaskClient
from flask_login import confirm_login
from flask_login import current_user
from flask_login import fresh_login_required
from flask_login import login_fresh
from flask_login import login_required
from flask_login import LoginManager
from flask_login import logout_user

from flask_serversession.backends.base import Backend

from .conftest import Clock
from .conftest import session_cookie
from .conftest import store_of
from .support.users import add_sign_in
from .support.users import authenticate
from .support.users import sign_in

# Flask-Login dates its remember cookie with datetime.utcnow(), which newer
# Pythons deprecate; the warning is Flask-Login's, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")

REMEMBER = "remember_token"


def add_login(app: Flask) -> LoginManager:
    """Flask-Login set up as in the docs page, with views that show the user."""
    login_manager = add_sign_in(app)

    # docs/extensions.rst, "Fresh logins"
    @app.post("/password")
    @fresh_login_required
    def change_password() -> str:
        return "Password changed."

    @app.post("/reauthenticate")
    @login_required
    def reauthenticate() -> str:
        if authenticate(current_user.id, request.form["password"]) is None:
            abort(401)
        confirm_login()
        return "Confirmed."

    return login_manager


def other_client(app: Flask, token: str, *, user_agent: str, remote_addr: str) -> FlaskClient:
    """A client on another machine that replays a session cookie it got hold of."""
    client = app.test_client()
    client.environ_base.update(HTTP_USER_AGENT=user_agent, REMOTE_ADDR=remote_addr)
    client.set_cookie("session", token)
    return client


def stored_sessions(app: Flask) -> list[dict[str, t.Any]]:
    return [data for _, data in store_of(app).items()]


def test_login_regenerates_the_session_and_keeps_the_user(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = make_app(backend)
    add_login(app)
    client = app.test_client()
    client.post("/set", json={"cart": ["apple"]})
    before_login = session_cookie(client)
    assert before_login is not None

    assert client.post("/login", data={"username": "alice", "password": "wrong"}).status_code == 401
    assert session_cookie(client) == before_login
    sign_in(client)

    after_login = session_cookie(client)
    assert after_login is not None and after_login != before_login
    assert client.get("/whoami").text == "alice"
    assert client.get("/whoami").text == "alice"
    assert client.get("/get/cart").json == {"value": ["apple"]}
    (data,) = stored_sessions(app)
    assert data["_user_id"] == "alice" and data["cart"] == ["apple"]

    # The id planted before sign-in is worth nothing afterwards.
    fixated = app.test_client()
    fixated.set_cookie("session", before_login)
    assert fixated.get("/whoami").text == "anonymous"
    assert fixated.get("/get/cart").json == {"value": None}


def test_logout_recipe_ends_session_and_remember_cookie(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = make_app(backend)
    add_login(app)
    client = app.test_client()
    sign_in(client, remember=True)
    assert client.get_cookie(REMEMBER) is not None
    assert store_of(app).count() == 1

    response = client.post("/logout")

    assert response.text == "Signed out."
    expired = {c.split("=", 1)[0] for c in response.headers.getlist("Set-Cookie")}
    assert expired == {"session", REMEMBER}
    assert all("Max-Age=0" in c for c in response.headers.getlist("Set-Cookie"))
    assert client.get_cookie("session") is None
    assert client.get_cookie(REMEMBER) is None
    assert store_of(app).count() == 0

    response = client.get("/whoami")
    assert response.text == "anonymous"
    assert "Set-Cookie" not in response.headers
    assert store_of(app).count() == 0


def test_logout_user_before_destroy_leaves_the_remember_cookie(
    make_app: t.Callable[..., Flask],
) -> None:
    # Why the recipe destroys first: destroy() also drops the "clear the
    # remember cookie" note that logout_user() leaves in the session.
    app = make_app()
    add_login(app)

    @app.post("/logout-wrong-order")
    def logout_wrong_order() -> str:
        logout_user()
        session.destroy()
        return "Signed out?"

    client = app.test_client()
    sign_in(client, remember=True)
    client.post("/logout-wrong-order")

    assert client.get_cookie("session") is None
    assert client.get_cookie(REMEMBER) is not None
    assert client.get("/whoami").text == "alice"


def test_remember_me_restores_a_non_fresh_login(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = make_app(backend)
    add_login(app)
    client = app.test_client()
    sign_in(client, remember=True)
    assert client.post("/password").text == "Password changed."

    # The browser closes: the session cookie (no Expires) is gone.
    client.delete_cookie("session")
    assert client.get("/whoami").text == "alice"
    restored = session_cookie(client)
    assert restored is not None
    assert client.get("/whoami").text == "alice"
    assert session_cookie(client) == restored
    assert {"_user_id": "alice", "_fresh": False}.items() <= next(
        data for data in stored_sessions(app) if "_id" not in data
    ).items()

    assert client.post("/password").status_code == 401
    assert client.post("/reauthenticate", data={"password": "wrong"}).status_code == 401
    assert client.post("/reauthenticate", data={"password": "wonderland"}).text == "Confirmed."
    assert client.post("/password").text == "Password changed."
    assert session_cookie(client) == restored


def test_remember_me_outlives_an_expired_session(make_app: t.Callable[..., Flask]) -> None:
    app = make_app()
    add_login(app)
    clock = Clock()
    store_of(app).clock = clock
    client = app.test_client()
    sign_in(client, remember=True)
    expired = session_cookie(client)

    clock.advance(days=2)

    assert client.get("/whoami").text == "alice"
    assert session_cookie(client) not in (None, expired)
    assert client.post("/password").status_code == 401


def test_without_remember_me_the_login_ends_with_the_session_cookie(
    make_app: t.Callable[..., Flask],
) -> None:
    app = make_app()
    add_login(app)
    client = app.test_client()
    sign_in(client)
    assert client.get_cookie(REMEMBER) is None

    client.delete_cookie("session")
    assert client.get("/whoami").text == "anonymous"


def test_strong_protection_signs_out_a_replayed_cookie(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = make_app(backend)
    add_login(app).session_protection = "strong"
    client = app.test_client()
    sign_in(client)
    assert client.get("/whoami").text == "alice"
    token = session_cookie(client)
    assert token is not None

    thief = other_client(app, token, user_agent="Other/1.0", remote_addr="127.0.0.2")
    assert thief.get("/whoami").text == "anonymous"

    # The stolen session no longer signs anyone in, the owner included.
    assert thief.get("/whoami").text == "anonymous"
    assert client.get("/whoami").text == "anonymous"
    assert not any("_user_id" in data for data in stored_sessions(app))


def test_strong_protection_leaves_the_owner_their_remember_cookie(
    make_app: t.Callable[..., Flask],
) -> None:
    app = make_app()
    add_login(app).session_protection = "strong"
    client = app.test_client()
    sign_in(client, remember=True)
    token = session_cookie(client)
    assert token is not None

    thief = other_client(app, token, user_agent="Other/1.0", remote_addr="127.0.0.2")
    assert thief.get("/whoami").text == "anonymous"

    # The owner is signed in again from the remember cookie, as not fresh.
    assert client.get("/whoami").text == "alice"
    assert session_cookie(client) != token
    assert client.post("/password").status_code == 401


def test_strong_protection_holds_for_a_session_with_its_own_lifetime(
    make_app: t.Callable[..., Flask],
) -> None:
    # set_lifetime() makes the cookie persistent but leaves session.permanent
    # alone, so Flask-Login still applies "strong".
    app = make_app()
    add_login(app).session_protection = "strong"

    @app.post("/stay-signed-in")
    def stay_signed_in() -> str:
        session.set_lifetime(timedelta(days=30))
        return "Kept for 30 days."

    client = app.test_client()
    sign_in(client)
    response = client.post("/stay-signed-in")
    assert "Expires=" in response.headers["Set-Cookie"]
    token = session_cookie(client)
    assert token is not None

    thief = other_client(app, token, user_agent="Other/1.0", remote_addr="127.0.0.2")
    assert thief.get("/whoami").text == "anonymous"
    assert client.get("/whoami").text == "anonymous"


def test_basic_protection_marks_a_replayed_cookie_non_fresh(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = make_app(backend)
    add_login(app).session_protection = "basic"
    client = app.test_client()
    sign_in(client)
    token = session_cookie(client)
    assert token is not None

    thief = other_client(app, token, user_agent="Other/1.0", remote_addr="127.0.0.1")
    assert thief.get("/whoami").text == "alice"
    assert thief.post("/password").status_code == 401
    assert client.post("/password").status_code == 401
    (data,) = stored_sessions(app)
    assert data["_fresh"] is False


@pytest.mark.parametrize("how", ["config", "before_request"])
def test_strong_protection_acts_as_basic_on_permanent_sessions(
    make_app: t.Callable[..., Flask], how: str
) -> None:
    # Flask-Login only marks a permanent session non-fresh, even in "strong" mode.
    app = make_app(SERVERSESSION_PERMANENT=how == "config")
    if how == "before_request":

        @app.before_request
        def make_session_permanent() -> None:
            session.permanent = True

    add_login(app).session_protection = "strong"
    client = app.test_client()
    sign_in(client)
    token = session_cookie(client)
    assert token is not None

    thief = other_client(app, token, user_agent="Other/1.0", remote_addr="127.0.0.2")
    assert thief.get("/whoami").text == "alice"
    assert thief.post("/password").status_code == 401


def rotating_login_app(make_app: t.Callable[..., Flask], backend: Backend | str) -> Flask:
    app = make_app(backend, SERVERSESSION_ROTATE_EVERY=timedelta(minutes=15))
    add_login(app)
    store_of(app).clock = Clock()

    @app.get("/fresh")
    def fresh() -> str:
        return "fresh" if login_fresh() else "not fresh"

    return app


def test_a_fresh_login_stays_fresh_across_rotations(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = rotating_login_app(make_app, backend)
    clock = t.cast(Clock, store_of(app).clock)
    client = app.test_client()
    sign_in(client)
    tokens = [session_cookie(client)]
    for _ in range(3):
        clock.advance(minutes=16)
        assert client.get("/fresh").text == "fresh"
        tokens.append(session_cookie(client))
        assert client.get("/whoami").text == "alice"
        assert client.post("/password").text == "Password changed."
    assert len(set(tokens)) == 4
    assert len(stored_sessions(app)) == 1
    # Another tab still holding the token from before the last rotation.
    other = app.test_client()
    other.set_cookie("session", t.cast(str, tokens[-2]))
    assert other.get("/fresh").text == "fresh"
    assert session_cookie(other) == tokens[-1]


def test_a_remembered_user_is_restored_after_rotations_and_expiry(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = rotating_login_app(make_app, backend)
    clock = t.cast(Clock, store_of(app).clock)
    client = app.test_client()
    sign_in(client, remember=True)
    clock.advance(minutes=16)
    assert client.get("/whoami").text == "alice"
    rotated = session_cookie(client)

    # The session expires (a day of no use): the remember cookie signs the user in again.
    clock.advance(days=2)
    assert client.get("/whoami").text == "alice"
    assert session_cookie(client) not in (None, rotated)
    assert client.get("/fresh").text == "not fresh"
    assert client.post("/password").status_code == 401
    assert client.post("/reauthenticate", data={"password": "wonderland"}).text == "Confirmed."
    clock.advance(minutes=16)
    assert client.get("/fresh").text == "fresh"
    assert client.get("/whoami").text == "alice"
    assert len(stored_sessions(app)) == 1
