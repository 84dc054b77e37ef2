from __future__ import annotations

import typing as t

from flask import Flask

from .conftest import session_cookie


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
    client.set_cookie("session", "A" * 43 + "." + "B" * 43)
    response = client.get("/dump")
    assert "Expires=Thu, 01 Jan 1970" in set_cookie_header(response)
    assert session_cookie(client) is None


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
