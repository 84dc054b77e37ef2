from __future__ import annotations

import typing as t

import pytest
from flask import abort
from flask import Flask
from flask import request
from flask import session
from flask.testing import FlaskClient
from flask_login import current_user
from flask_login import login_user
from flask_login import LoginManager
from flask_login import logout_user
from flask_login import UserMixin

from flask_serversession.backends.base import Backend

#: The accounts the sign-in views know; a test may change them and restore them after.
PASSWORDS = {"alice": "wonderland", "bob": "builder"}


def needs_user_index(backend: Backend) -> None:
    """Skip, naming the backend, when it does not keep a user index yet."""
    if type(backend).user_records is Backend.user_records:
        pytest.skip(f"{type(backend).__name__} keeps no user index (no user_records)")


class User(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def authenticate(username: str, password: str) -> User | None:
    return User(username) if PASSWORDS.get(username) == password else None


def add_sign_in(app: Flask) -> LoginManager:
    """Flask-Login with the docs' sign-in and sign-out views, and one that shows the user."""
    login_manager = LoginManager()
    login_manager.init_app(app)

    @login_manager.user_loader
    def load_user(user_id: str) -> User | None:
        return User(user_id) if user_id in PASSWORDS else None

    # docs/extensions.rst, "Sign in and sign out"
    @app.post("/login")
    def login() -> str:
        user = authenticate(request.form["username"], request.form["password"])
        if user is None:
            abort(401)
        session.regenerate()
        login_user(user, remember=request.form.get("remember") == "yes")
        return "Signed in."

    @app.post("/logout")
    def logout() -> str:
        session.destroy()
        logout_user()
        return "Signed out."

    @app.get("/whoami")
    def whoami() -> str:
        return t.cast(str, current_user.get_id() or "anonymous")

    return login_manager


def sign_in(client: FlaskClient, username: str = "alice", *, remember: bool = False) -> None:
    """Sign ``username`` in through the sign-in view, with the right password."""
    form = {"username": username, "password": PASSWORDS[username]}
    if remember:
        form["remember"] = "yes"
    response = client.post("/login", data=form)
    assert response.status_code == 200, response.text
