"""Cookie name prefixes: a session cookie whose settings break its prefix's rule
is a ConfigError at init_app; a valid one is set and deleted with what the prefix
needs; Partitioned (CHIPS) holds on set and on delete."""

from __future__ import annotations

import typing as t

import pytest
from flask import Flask

from flask_serversession import ConfigError

HTTPS = "https://localhost"

#: A configuration each prefix accepts.
VALID = {"SESSION_COOKIE_SECURE": True, "SESSION_COOKIE_HTTPONLY": True}

#: (name, a setting that breaks its rule, the key the error names).
BROKEN = [
    ("__Secure-session", {"SESSION_COOKIE_SECURE": False}, "SESSION_COOKIE_SECURE"),
    ("__Host-session", {"SESSION_COOKIE_SECURE": False}, "SESSION_COOKIE_SECURE"),
    ("__Host-session", {"SESSION_COOKIE_DOMAIN": "example.test"}, "SESSION_COOKIE_DOMAIN"),
    ("__Host-session", {"SESSION_COOKIE_PATH": "/app"}, "SESSION_COOKIE_PATH"),
    ("__Host-session", {"APPLICATION_ROOT": "/app"}, "APPLICATION_ROOT"),
    ("__Http-session", {"SESSION_COOKIE_SECURE": False}, "SESSION_COOKIE_SECURE"),
    ("__Http-session", {"SESSION_COOKIE_HTTPONLY": False}, "SESSION_COOKIE_HTTPONLY"),
    ("__Host-Http-session", {"SESSION_COOKIE_SECURE": False}, "SESSION_COOKIE_SECURE"),
    ("__Host-Http-session", {"SESSION_COOKIE_HTTPONLY": False}, "SESSION_COOKIE_HTTPONLY"),
    ("__Host-Http-session", {"SESSION_COOKIE_DOMAIN": "example.test"}, "SESSION_COOKIE_DOMAIN"),
    ("__Host-Http-session", {"SESSION_COOKIE_PATH": "/app"}, "SESSION_COOKIE_PATH"),
    # Browsers match prefixes case-insensitively (RFC 6265bis).
    ("__host-session", {"SESSION_COOKIE_SECURE": False}, "SESSION_COOKIE_SECURE"),
    ("__SECURE-session", {"SESSION_COOKIE_SECURE": False}, "SESSION_COOKIE_SECURE"),
    ("__HOST-HTTP-session", {"SESSION_COOKIE_HTTPONLY": False}, "SESSION_COOKIE_HTTPONLY"),
]


@pytest.mark.parametrize(("name", "broken", "key"), BROKEN)
def test_a_broken_prefix_rule_is_a_config_error(
    make_app: t.Callable[..., Flask], name: str, broken: dict[str, t.Any], key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        make_app(SESSION_COOKIE_NAME=name, **{**VALID, **broken})
    message = str(info.value)
    assert f"{key} = " in message
    assert repr(name) in message
    assert (
        "set it to" in message or "leave it unset" in message or "SESSION_COOKIE_PATH =" in message
    )


@pytest.mark.parametrize(
    "name", ["__Secure-session", "__Host-session", "__Http-session", "__Host-Http-session"]
)
def test_a_prefixed_cookie_is_set_and_deleted_with_what_its_prefix_needs(
    make_app: t.Callable[..., Flask], name: str
) -> None:
    client = make_app(SESSION_COOKIE_NAME=name, **VALID).test_client()
    set_header = client.post("/set", json={"a": 1}, base_url=HTTPS).headers["Set-Cookie"]
    delete_header = client.post("/destroy", base_url=HTTPS).headers["Set-Cookie"]
    for header in (set_header, delete_header):
        parts = [part.strip() for part in header.split(";")]
        assert parts[0].startswith(f"{name}=")
        assert {"Secure", "HttpOnly", "Path=/"} <= set(parts)
        assert not any(part.lower().startswith("domain=") for part in parts)
    assert "Expires=Thu, 01 Jan 1970" in delete_header
    assert client.get_cookie(name) is None


def test_names_without_a_prefix_need_nothing(make_app: t.Callable[..., Flask]) -> None:
    for name in ("session", "__Hostile", "_Host-session", "x__Host-session"):
        make_app(SESSION_COOKIE_NAME=name, SESSION_COOKIE_SECURE=False, APPLICATION_ROOT="/a")


def test_host_prefix_with_a_root_path_under_an_application_root(
    make_app: t.Callable[..., Flask],
) -> None:
    app = make_app(
        SESSION_COOKIE_NAME="__Host-session",
        SESSION_COOKIE_PATH="/",
        APPLICATION_ROOT="/app",
        **VALID,
    )
    header = app.test_client().post("/set", json={"a": 1}, base_url=HTTPS).headers["Set-Cookie"]
    assert "Path=/;" in header or header.endswith("Path=/")


def test_partitioned_holds_on_set_and_on_delete(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(
        SESSION_COOKIE_NAME="__Host-session",
        SESSION_COOKIE_SAMESITE="None",
        SESSION_COOKIE_PARTITIONED=True,
        **VALID,
    )
    client = app.test_client()
    set_header = client.post("/set", json={"a": 1}, base_url=HTTPS).headers["Set-Cookie"]
    delete_header = client.post("/destroy", base_url=HTTPS).headers["Set-Cookie"]
    for header in (set_header, delete_header):
        parts = {part.strip() for part in header.split(";")}
        assert {"Partitioned", "Secure", "SameSite=None", "Path=/"} <= parts
    assert "Expires=Thu, 01 Jan 1970" in delete_header
