from __future__ import annotations

import typing as t
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from datetime import timezone

from flask import abort
from flask import Flask
from flask import redirect
from flask import request
from flask import session
from flask import url_for
from flask_login import confirm_login
from flask_login import current_user
from flask_login import login_fresh
from flask_login import login_required
from flask_login import login_user
from flask_login import LoginManager
from flask_login import logout_user
from flask_login import UserMixin

from flask_serversession import ServerSession

from .conftest import Clock
from .conftest import session_cookie
from .conftest import store_of

MakeApp = t.Callable[..., Flask]


def test_strict_idle_timeout(make_app: MakeApp) -> None:
    app = make_app(
        SERVERSESSION_EXPIRE_TIME=timedelta(minutes=30),
        SERVERSESSION_RENEW_TIME=timedelta(minutes=30),
        SERVERSESSION_RENEW_ON="access",
        SERVERSESSION_ABSOLUTE_LIFETIME=timedelta(hours=12),
    )
    clock = Clock()
    store_of(app).clock = clock
    client = app.test_client()

    client.post("/set", json={"user": "alice"})
    for _ in range(3):
        clock.advance(minutes=29)
        assert client.get("/get/user").json == {"value": "alice"}
    clock.advance(minutes=31)
    assert client.get("/get/user").json == {"value": None}

    client.post("/set", json={"user": "bob"})
    for _ in range(12 * 3 - 1):
        clock.advance(minutes=20)
        assert client.get("/get/user").json == {"value": "bob"}
    clock.advance(minutes=20)
    assert client.get("/get/user").json == {"value": None}


@dataclass
class User:
    id: int


def test_recent_authentication(make_app: MakeApp) -> None:
    app = make_app()

    def signed_in(user: User) -> None:
        session.regenerate()
        session["user_id"] = user.id
        session["authenticated_at"] = datetime.now(timezone.utc)

    def authenticated_within(span: timedelta = timedelta(minutes=5)) -> bool:
        at = session.get("authenticated_at")
        return at is not None and datetime.now(timezone.utc) - at < span

    @app.post("/account/email")
    def change_email() -> t.Any:
        if not authenticated_within():
            return redirect(url_for("confirm_password", next=request.path))
        return "changed"

    @app.route("/confirm", methods=["GET", "POST"])
    def confirm_password() -> str:
        if request.method == "POST":
            signed_in(User(7))
        return "confirmed"

    @app.post("/age")
    def age() -> str:
        session["authenticated_at"] -= timedelta(minutes=10)
        return "aged"

    client = app.test_client()
    assert client.post("/account/email").location == "/confirm?next=/account/email"
    client.post("/confirm")
    first = session_cookie(client)
    assert client.post("/account/email").text == "changed"
    client.post("/age")
    assert client.post("/account/email").status_code == 302
    client.post("/confirm")
    assert session_cookie(client) != first
    assert client.post("/account/email").text == "changed"


# "Recipes for the rest of chapter V7"

RECIPE_PASSWORDS = {"alice": "wonderland"}


class Account(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id
        self.is_admin = False


def recipe_app(make_app: MakeApp, **config: t.Any) -> tuple[Flask, ServerSession]:
    """An app with Flask-Login and the recipes' views, on a user-indexed memory store."""
    app = make_app(SERVERSESSION_USER_KEY="_user_id", **config)
    manager = LoginManager(app)
    server_session = ServerSession()

    @manager.user_loader
    def load_user(user_id: str) -> Account | None:
        return Account(user_id) if user_id in RECIPE_PASSWORDS else None

    def check_password(user: t.Any, password: str) -> bool:
        return RECIPE_PASSWORDS.get(user.get_id()) == password

    def authenticated_within(span: timedelta = timedelta(minutes=5)) -> bool:
        at = session.get("authenticated_at")
        return at is not None and datetime.now(timezone.utc) - at < span

    @app.post("/login")
    def login() -> str:
        user = Account(request.form["username"])
        if not check_password(user, request.form["password"]):
            abort(401)
        session.regenerate()
        login_user(user)
        session["authenticated_at"] = datetime.now(timezone.utc)
        return "signed in"

    @app.post("/logout")
    def logout() -> t.Any:
        logout_user()
        session.destroy()
        response = redirect(url_for("index"))
        response.headers["Clear-Site-Data"] = '"cache", "cookies", "storage"'
        return response

    @app.get("/")
    def index() -> str:
        return t.cast(str, current_user.get_id() or "anonymous")

    def password_changed(user: t.Any) -> None:
        server_session.revoke_user(user.id, keep_current=True)
        session.regenerate()

    def account_disabled(user: t.Any) -> None:
        server_session.revoke_user(user.id, keep_current=False)

    @app.post("/password")
    @login_required
    def change_password() -> str:
        password_changed(current_user)
        return "changed"

    @app.post("/disable")
    @login_required
    def disable() -> str:
        account_disabled(current_user)
        return "disabled"

    @app.post("/reauthenticate")
    @login_required
    def reauthenticate() -> t.Any:
        if not check_password(current_user, request.form["password"]):
            abort(401)
        session.regenerate()
        confirm_login()
        return redirect(request.args.get("next") or url_for("index"))

    @app.get("/fresh")
    def fresh() -> dict[str, bool]:
        return {"fresh": login_fresh()}

    @app.post("/stale")
    def stale() -> str:
        session["_fresh"] = False
        return "stale"

    def made_admin(user: t.Any) -> None:
        user.is_admin = True
        if user.get_id() == current_user.get_id():
            session.regenerate()

    @app.post("/promote")
    @login_required
    def promote() -> str:
        made_admin(current_user._get_current_object())
        return "promoted"

    @app.post("/account/sessions/end-others")
    @login_required
    def end_other_sessions() -> t.Any:
        if not authenticated_within():
            return redirect(url_for("confirm_password", next=request.path))
        ended = server_session.revoke_user(current_user.get_id(), keep_current=True)
        session.regenerate()
        return f"Signed out of {ended} other sessions."

    @app.post("/confirm")
    def confirm_password() -> str:
        session["authenticated_at"] = datetime.now(timezone.utc)
        return "confirmed"

    @app.post("/age")
    def age() -> str:
        session["authenticated_at"] -= timedelta(minutes=10)
        return "aged"

    return app, server_session


def signed_in_device(app: Flask) -> t.Any:
    client = app.test_client()
    client.post("/login", data={"username": "alice", "password": "wonderland"})
    assert client.get("/").text == "alice"
    return client


def test_sign_out_clears_site_data(make_app: MakeApp) -> None:
    app, _ = recipe_app(make_app)
    client = signed_in_device(app)
    token = session_cookie(client)
    response = client.post("/logout")
    assert response.headers["Clear-Site-Data"] == '"cache", "cookies", "storage"'
    assert session_cookie(client) is None
    assert opens_as(app, token) == "anonymous"


def opens_as(app: Flask, cookie: str | None) -> str:
    """Who a fresh client that replays ``cookie`` is signed in as."""
    replay = app.test_client()
    replay.set_cookie("session", t.cast(str, cookie))
    return replay.get("/").text


def test_account_changes_end_sessions(make_app: MakeApp) -> None:
    app, _ = recipe_app(make_app)
    laptop, phone = signed_in_device(app), signed_in_device(app)
    before = session_cookie(laptop)
    assert laptop.post("/password").text == "changed"
    assert session_cookie(laptop) != before
    assert laptop.get("/").text == "alice"
    assert phone.get("/").text == "anonymous"

    tablet = signed_in_device(app)
    assert laptop.post("/disable").text == "disabled"
    assert laptop.get("/").text == "anonymous"
    assert tablet.get("/").text == "anonymous"


def test_reauthentication_with_flask_login(make_app: MakeApp) -> None:
    app, _ = recipe_app(make_app)
    client = signed_in_device(app)
    client.post("/stale")
    assert client.get("/fresh").json == {"fresh": False}
    stale = session_cookie(client)
    assert client.post("/reauthenticate", data={"password": "nope"}).status_code == 401
    response = client.post("/reauthenticate", data={"password": "wonderland"})
    assert response.status_code == 302
    assert client.get("/fresh").json == {"fresh": True}
    assert session_cookie(client) != stale

    before = session_cookie(client)
    assert client.post("/promote").text == "promoted"
    assert session_cookie(client) != before
    assert opens_as(app, before) == "anonymous"


def test_ending_other_sessions_asks_for_the_password(make_app: MakeApp) -> None:
    app, _ = recipe_app(make_app)
    laptop, phone = signed_in_device(app), signed_in_device(app)
    laptop.post("/age")
    response = laptop.post("/account/sessions/end-others")
    assert response.status_code == 302 and "/confirm" in response.headers["Location"]
    assert phone.get("/").text == "alice"
    laptop.post("/confirm")
    assert laptop.post("/account/sessions/end-others").text == "Signed out of 1 other sessions."
    assert phone.get("/").text == "anonymous"
    assert laptop.get("/").text == "alice"


def test_recommended_values(make_app: MakeApp) -> None:
    rows = {
        "AAL3": (timedelta(minutes=15), "access", timedelta(hours=12)),
        "AAL2": (timedelta(hours=1), "access", timedelta(hours=24)),
        "AAL1": (timedelta(hours=24), "modify", timedelta(days=30)),
    }
    for idle, renew_on, absolute in rows.values():
        app = make_app(
            SERVERSESSION_EXPIRE_TIME=idle,
            SERVERSESSION_RENEW_TIME=idle,
            SERVERSESSION_RENEW_ON=renew_on,
            SERVERSESSION_ABSOLUTE_LIFETIME=absolute,
        )
        clock = Clock()
        store_of(app).clock = clock
        client = app.test_client()
        client.post("/set", json={"user": "alice"})
        clock.advance(seconds=idle.total_seconds() - 60)
        assert client.get("/get/user").json == {"value": "alice"}
        clock.advance(seconds=idle.total_seconds() + 60)
        assert client.get("/get/user").json == {"value": None}


def test_partitioned_cookie_for_an_embedded_app(make_app: MakeApp) -> None:
    app = make_app(
        SESSION_COOKIE_NAME="__Host-session",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_SAMESITE="None",
        SESSION_COOKIE_PARTITIONED=True,
    )
    client = app.test_client()
    https = "https://localhost"
    set_header = client.post("/set", json={"a": 1}, base_url=https).headers["Set-Cookie"]
    delete_header = client.post("/destroy", base_url=https).headers["Set-Cookie"]
    for header in (set_header, delete_header):
        parts = {part.strip() for part in header.split(";")}
        assert {"Partitioned", "Secure", "SameSite=None", "Path=/", "HttpOnly"} <= parts
        assert header.startswith("__Host-session=")
