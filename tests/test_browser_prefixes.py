"""A ``__Host-`` session cookie in headless Chromium: set at sign-in, sent back,
and deleted at sign-out, end to end; and dropped, whatever the case of its
prefix, when its Path breaks the rule. Chromium counts http://localhost as a
secure context, where it accepts Secure and ``__Host-`` cookies."""

from __future__ import annotations

import typing as t

import pytest
from flask import Flask
from flask import session

from .test_browser import browsers  # noqa: F401
from .test_browser import driver  # noqa: F401
from .test_browser import serve
from .test_browser import wait_for_text

NAME = "__Host-session"


def prefixed_app(make_app: t.Callable[..., Flask], name: str) -> Flask:
    app = make_app(
        SESSION_COOKIE_NAME=name, SESSION_COOKIE_SECURE=True, SESSION_COOKIE_SAMESITE="Lax"
    )

    @app.get("/page")
    def page() -> str:
        user = session.get("user")
        return f'<p id="status">{"signed in as " + user if user else "not signed in"}</p>'

    @app.get("/sign-in/<user>")
    def sign_in(user: str) -> str:
        session.regenerate()
        session["user"] = user
        return '<p id="status">signed in</p>'

    @app.get("/sign-out")
    def sign_out() -> str:
        session.destroy()
        return '<p id="status">signed out</p>'

    return app


def test_a_host_prefixed_cookie_is_set_sent_and_deleted(
    make_app: t.Callable[..., Flask],
    driver: t.Any,  # noqa: F811
) -> None:
    app = prefixed_app(make_app, NAME)
    with serve(app, "host-prefix") as url:
        base = url.replace("127.0.0.1", "localhost")
        driver.get(f"{base}/sign-in/alice")
        wait_for_text(driver, "status", "signed in")
        cookie = driver.get_cookie(NAME)
        assert cookie is not None, driver.get_cookies()
        assert (cookie["secure"], cookie["httpOnly"], cookie["path"]) == (True, True, "/")
        assert not cookie.get("domain", "localhost").startswith(".")
        driver.get(f"{base}/page")
        wait_for_text(driver, "status", "signed in as alice")

        driver.get(f"{base}/sign-out")
        wait_for_text(driver, "status", "signed out")
        # The deletion carried the prefix's attributes, or Chromium would have kept it.
        assert driver.get_cookie(NAME) is None, driver.get_cookies()
        driver.get(f"{base}/page")
        wait_for_text(driver, "status", "not signed in")


@pytest.mark.parametrize(
    ("name", "kept"), [("session", True), (NAME, False), ("__host-session", False)]
)
def test_chromium_drops_a_host_cookie_whose_path_breaks_the_rule(
    make_app: t.Callable[..., Flask],
    driver: t.Any,  # noqa: F811
    name: str,
    kept: bool,
) -> None:
    # What init_app refuses, forced after it: the browser drops the cookie
    # without a word, whatever the case of the prefix, and the sign-in is
    # lost; the same cookie without a prefix is kept.
    app = prefixed_app(make_app, name)
    app.config["SESSION_COOKIE_PATH"] = "/sign-in"
    with serve(app, "host-prefix-broken") as url:
        base = url.replace("127.0.0.1", "localhost")
        driver.get(f"{base}/sign-in/alice")
        wait_for_text(driver, "status", "signed in")
        assert [c["name"] for c in driver.get_cookies()] == ([name] if kept else [])
