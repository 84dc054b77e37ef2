from __future__ import annotations

import typing as t
from dataclasses import dataclass
from datetime import datetime
from datetime import timedelta
from datetime import timezone

from flask import Flask
from flask import redirect
from flask import request
from flask import session
from flask import url_for

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
