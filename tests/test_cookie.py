from __future__ import annotations

import typing as t

import pytest
from flask import Flask
from flask import request

from flask_serversession import ServerSession

from .conftest import session_cookie
from .conftest import store_of


def set_cookie_header(response: t.Any) -> str:
    return t.cast(str, response.headers["Set-Cookie"])


def test_cookie_attributes_come_from_flask_config(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(
        SESSION_COOKIE_NAME="sid",
        SESSION_COOKIE_DOMAIN="example.test",
        SESSION_COOKIE_PATH="/app",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_PARTITIONED=True,
    )
    response = app.test_client().post("/set", json={"a": 1}, base_url="https://example.test")
    header = set_cookie_header(response)
    assert header.startswith("sid=")
    for part in ("Domain=example.test", "Path=/app", "Secure", "HttpOnly", "SameSite=Strict"):
        assert part in header
    assert "Partitioned" in header


def test_http_only_can_be_turned_off(make_app: t.Callable[..., Flask]) -> None:
    response = make_app(SESSION_COOKIE_HTTPONLY=False).test_client().post("/set", json={"a": 1})
    assert "HttpOnly" not in set_cookie_header(response)


def test_host_prefixed_cookie_set_and_deleted_alike(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(SESSION_COOKIE_NAME="__Host-session", SESSION_COOKIE_SECURE=True)
    client = app.test_client()
    https = "https://localhost"
    set_header = set_cookie_header(client.post("/set", json={"a": 1}, base_url=https))
    delete_header = set_cookie_header(client.post("/destroy", base_url=https))
    for header in (set_header, delete_header):
        assert header.startswith("__Host-session=")
        assert "Path=/" in header and "Secure" in header and "Domain" not in header
    assert "Expires=Thu, 01 Jan 1970" in delete_header
    assert session_cookie(client, "__Host-session") is None


def test_cookie_set_only_when_id_is_new_or_expiry_moves(app: Flask) -> None:
    client = app.test_client()
    assert "Set-Cookie" in client.post("/set", json={"a": 1}).headers
    assert "Set-Cookie" not in client.post("/set", json={"a": 2}).headers
    assert "Set-Cookie" not in client.get("/dump").headers


def test_stale_cookie_of_an_empty_session_is_expired(app: Flask) -> None:
    client = app.test_client()
    client.post("/set", json={"user": "alice"})
    with app.app_context():
        ServerSession().clear()
    response = client.get("/dump")
    assert response.json == {}
    assert "Expires=Thu, 01 Jan 1970" in set_cookie_header(response)
    assert "private" in response.headers["Cache-Control"]
    assert session_cookie(client) is None


@pytest.mark.parametrize(
    "token", ["A" * 43 + "." + "B" * 43, "not-a-token", "A" * 43], ids=["forged", "junk", "bare"]
)
def test_cookie_that_does_not_verify_is_left_alone(app: Flask, token: str) -> None:
    client = app.test_client()
    client.set_cookie("session", token)
    response = client.get("/dump")
    assert response.json == {}
    assert "Set-Cookie" not in response.headers
    assert session_cookie(client) == token


def test_header_mode_returns_token_and_accepts_it(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(SERVERSESSION_HEADER_NAME="X-Session-Token")
    api = app.test_client(use_cookies=False)
    response = api.post("/set", json={"user": "bot"})
    token = response.headers["X-Session-Token"]
    assert token
    headers = {"X-Session-Token": token}
    response = api.get("/dump", headers=headers)
    assert response.json == {"user": "bot"}
    assert "X-Session-Token" not in response.headers
    assert "X-Session-Token" in response.headers["Vary"]
    response = api.post("/regenerate", headers=headers)
    assert response.headers["X-Session-Token"] not in ("", token)


def test_header_mode_gives_a_browser_its_new_token_in_the_cookie_only(
    make_app: t.Callable[..., Flask],
) -> None:
    app = make_app(SERVERSESSION_HEADER_NAME="X-Session-Token")
    browser = app.test_client()
    browser.post("/set", json={"user": "alice"})
    token = session_cookie(browser)
    response = browser.post("/regenerate")
    new_token = session_cookie(browser)
    assert new_token not in (None, token)
    assert f"session={new_token}" in set_cookie_header(response)
    assert "X-Session-Token" not in response.headers
    # Sent along with the header, the cookie still marks a browser.
    response = browser.post("/regenerate", headers={"X-Session-Token": t.cast(str, new_token)})
    assert session_cookie(browser) not in (None, new_token)
    assert "X-Session-Token" not in response.headers


def test_header_mode_gives_an_api_client_its_new_token_in_the_header(
    make_app: t.Callable[..., Flask],
) -> None:
    app = make_app(SERVERSESSION_HEADER_NAME="X-Session-Token")
    api = app.test_client(use_cookies=False)
    first = api.post("/set", json={"user": "bot"}).headers["X-Session-Token"]
    response = api.post("/regenerate", headers={"X-Session-Token": first})
    assert response.headers["X-Session-Token"] not in ("", first)


def test_header_wins_over_cookie(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(SERVERSESSION_HEADER_NAME="X-Session-Token")
    client = app.test_client()
    client.post("/set", json={"who": "cookie"})
    other = app.test_client(use_cookies=False)
    header_token = other.post("/set", json={"who": "header"}).headers["X-Session-Token"]
    response = client.get("/dump", headers={"X-Session-Token": header_token})
    assert response.json == {"who": "header"}


def test_no_header_without_header_mode(app: Flask) -> None:
    response = app.test_client().post("/set", json={"a": 1})
    assert "X-Session-Token" not in response.headers


def test_a_rolling_key_rotation_signs_no_one_out(make_app: t.Callable[..., Flask]) -> None:
    # One store, two app servers mid-deploy: the new one signs with a new key
    # and still accepts the old; the old one does not know the new key yet.
    new = make_app(SECRET_KEY="new key", SECRET_KEY_FALLBACKS=["test secret key"])
    old = make_app(store_of(new).backend)
    client = old.test_client()
    client.post("/set", json={"user": "alice"})
    signed_in = new.test_client()
    signed_in.set_cookie("session", t.cast(str, session_cookie(client)))
    assert signed_in.get("/dump").json == {"user": "alice"}
    signed_in.post("/regenerate")  # the new server hands out a token of its key
    token = t.cast(str, session_cookie(signed_in))
    at_old = old.test_client()
    at_old.set_cookie("session", token)
    response = at_old.get("/dump")
    assert response.json == {} and "Set-Cookie" not in response.headers
    assert session_cookie(at_old) == token
    assert signed_in.get("/dump").json == {"user": "alice"}


@pytest.mark.parametrize(
    ("view_sets", "expected"),
    [
        (None, "private"),
        ("public, max-age=600", "max-age=600, private"),
        ("private, max-age=60", "private, max-age=60"),
        ("no-store", "no-store"),
    ],
)
def test_responses_that_set_or_expire_the_cookie_are_private(
    make_app: t.Callable[..., Flask], view_sets: str | None, expected: str
) -> None:
    app = make_app()

    @app.after_request
    def cache(response: t.Any) -> t.Any:
        if view_sets is not None and request.path != "/dump":
            response.headers["Cache-Control"] = view_sets
        return response

    client = app.test_client()
    response = client.post("/set", json={"a": 1})
    assert "Set-Cookie" in response.headers
    assert response.headers["Cache-Control"] == expected
    response = client.get("/dump")
    assert "Set-Cookie" not in response.headers and "Cache-Control" not in response.headers
    response = client.post("/destroy")
    assert "Expires=Thu, 01 Jan 1970" in set_cookie_header(response)
    assert response.headers["Cache-Control"] == expected
