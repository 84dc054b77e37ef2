"""SP 800-63B-4 section 5.2: a sign-in (``session.regenerate()``) restarts both
timeouts, the absolute lifetime included; a rotation restarts neither. On every backend."""

from __future__ import annotations

import typing as t
from datetime import datetime
from datetime import timedelta

from flask import Flask
from flask import session
from flask.testing import FlaskClient

from flask_serversession.backends.base import Backend

from .conftest import Clock
from .conftest import session_cookie
from .conftest import store_of

HOUR = timedelta(hours=1)
CAP = 12 * HOUR


def timed(
    make_app: t.Callable[..., Flask], backend: Backend, **config: t.Any
) -> tuple[Flask, Clock]:
    app = make_app(
        backend,
        SERVERSESSION_EXPIRE_TIME=24 * HOUR,
        SERVERSESSION_RENEW_TIME=24 * HOUR,
        SERVERSESSION_ABSOLUTE_LIFETIME=CAP,
        **config,
    )
    clock = Clock()
    store_of(app).clock = clock

    @app.post("/sign-in-for/<int:hours>")
    def sign_in_for(hours: int) -> str:
        session.regenerate()
        session.set_lifetime(timedelta(hours=hours))
        return "signed in"

    return app, clock


def meta(client: FlaskClient) -> tuple[datetime, datetime]:
    data = client.get("/meta").json
    assert data is not None
    return datetime.fromisoformat(data["created_at"]), datetime.fromisoformat(data["expires_at"])


def test_sign_in_restarts_the_absolute_lifetime(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app, clock = timed(make_app, backend)
    client = app.test_client()
    client.post("/set", json={"cart": [1]})
    clock.advance(hours=11)
    client.post("/regenerate")
    assert meta(client) == (clock.now, clock.now + CAP)
    clock.advance(hours=2)
    # Past the anonymous visit's cap, the signed-in session lives on.
    assert client.get("/dump").json == {"cart": [1]}
    clock.advance(hours=10)
    assert client.get("/dump").json == {}


def test_sign_in_with_its_own_lifetime_counts_from_the_sign_in(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app, clock = timed(make_app, backend)
    client = app.test_client()
    client.post("/set", json={"a": 1})
    clock.advance(hours=11)
    client.post("/sign-in-for/8")
    assert meta(client) == (clock.now, clock.now + 8 * HOUR)


def test_sign_in_also_restarts_the_expiry(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = make_app(backend, SERVERSESSION_EXPIRE_TIME=2 * HOUR, SERVERSESSION_RENEW_ON="never")
    clock = Clock()
    store_of(app).clock = clock
    client = app.test_client()
    client.post("/set", json={"a": 1})
    clock.advance(minutes=100)
    client.post("/regenerate")
    assert meta(client) == (clock.now, clock.now + 2 * HOUR)


def test_rotation_keeps_the_absolute_lifetime(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app, clock = timed(make_app, backend, SERVERSESSION_ROTATE_EVERY=HOUR)
    client = app.test_client()
    client.post("/set", json={"a": 1})
    created = clock.now
    first = session_cookie(client)
    clock.advance(hours=11)
    client.post("/set", json={"a": 2})
    assert session_cookie(client) != first
    assert meta(client) == (created, created + CAP)
    clock.advance(minutes=61)
    assert client.get("/dump").json == {}
