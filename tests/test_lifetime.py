from __future__ import annotations

import typing as t
from datetime import datetime
from datetime import timedelta

import pytest
from flask import Flask
from flask import session
from werkzeug.http import parse_date

from flask_serversession import ServerSession
from flask_serversession import SessionExpiredError

from .conftest import Clock
from .conftest import session_cookie
from .conftest import store_of

HOUR = timedelta(hours=1)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timed_app(make_app: t.Callable[..., Flask], clock: Clock) -> t.Callable[..., Flask]:
    def make(**config: t.Any) -> Flask:
        app = make_app(**config)
        store_of(app).clock = clock
        return app

    return make


def expires_of(client: t.Any) -> datetime:
    return datetime.fromisoformat(client.get("/meta").json["expires_at"])


def cookie_expiry(response: t.Any) -> datetime | None:
    header = response.headers["Set-Cookie"]
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name.lower() == "expires":
            return parse_date(value)
    return None


def test_new_session_lives_for_expire_time(timed_app: t.Any, clock: Clock) -> None:
    client = timed_app(
        SERVERSESSION_EXPIRE_TIME=3 * HOUR, SERVERSESSION_PERMANENT=True
    ).test_client()
    response = client.post("/set", json={"a": 1})
    assert expires_of(client) == clock.now + 3 * HOUR
    assert cookie_expiry(response) == clock.now + 3 * HOUR
    meta = client.get("/meta").json
    assert meta["new"] is False
    assert datetime.fromisoformat(meta["created_at"]) == clock.now


def test_durations_may_be_seconds(timed_app: t.Any, clock: Clock) -> None:
    client = timed_app(SERVERSESSION_EXPIRE_TIME=90).test_client()
    client.post("/set", json={"a": 1})
    assert expires_of(client) == clock.now + timedelta(seconds=90)


def test_renewal_never_shortens(timed_app: t.Any, clock: Clock) -> None:
    client = timed_app(SERVERSESSION_EXPIRE_TIME=24 * HOUR).test_client()
    client.post("/set", json={"a": 1})
    first = expires_of(client)
    clock.advance(hours=2)
    response = client.post("/set", json={"a": 2})
    assert expires_of(client) == first
    assert "Set-Cookie" not in response.headers


def test_renewal_pushes_expiry_near_the_end(timed_app: t.Any, clock: Clock) -> None:
    client = timed_app(
        SERVERSESSION_EXPIRE_TIME=2 * HOUR,
        SERVERSESSION_RENEW_TIME=HOUR,
        SERVERSESSION_PERMANENT=True,
    ).test_client()
    client.post("/set", json={"a": 1})
    clock.advance(minutes=90)
    response = client.post("/set", json={"a": 2})
    assert expires_of(client) == clock.now + HOUR
    assert cookie_expiry(response) == clock.now + HOUR


def test_renew_on_modify_ignores_reads(timed_app: t.Any, clock: Clock) -> None:
    client = timed_app(SERVERSESSION_EXPIRE_TIME=2 * HOUR).test_client()
    client.post("/set", json={"a": 1})
    first = expires_of(client)
    clock.advance(minutes=90)
    client.get("/get/a")
    assert expires_of(client) == first


def test_renew_on_access_renews_reads(timed_app: t.Any, clock: Clock) -> None:
    client = timed_app(
        SERVERSESSION_EXPIRE_TIME=2 * HOUR, SERVERSESSION_RENEW_ON="access"
    ).test_client()
    client.post("/set", json={"a": 1})
    clock.advance(minutes=90)
    client.get("/get/a")
    assert expires_of(client) == clock.now + HOUR


def test_renew_on_never_needs_explicit_renew(timed_app: t.Any, clock: Clock) -> None:
    client = timed_app(
        SERVERSESSION_EXPIRE_TIME=2 * HOUR, SERVERSESSION_RENEW_ON="never"
    ).test_client()
    client.post("/set", json={"a": 1})
    first = expires_of(client)
    clock.advance(minutes=90)
    client.post("/set", json={"a": 2})
    assert expires_of(client) == first
    client.post("/renew")
    assert expires_of(client) == clock.now + HOUR


def test_absolute_lifetime_caps_every_renewal(timed_app: t.Any, clock: Clock) -> None:
    app = timed_app(
        SERVERSESSION_EXPIRE_TIME=2 * HOUR,
        SERVERSESSION_RENEW_TIME=2 * HOUR,
        SERVERSESSION_ABSOLUTE_LIFETIME=3 * HOUR,
    )
    client = app.test_client()
    client.post("/set", json={"a": 1})
    created = clock.now
    clock.advance(minutes=90)
    client.post("/set", json={"a": 2})
    assert expires_of(client) == created + 3 * HOUR
    clock.advance(minutes=89)
    client.post("/renew")
    assert expires_of(client) == created + 3 * HOUR
    clock.advance(minutes=2)
    assert client.get("/dump").json == {}


def test_absolute_lifetime_shorter_than_expire_time(timed_app: t.Any, clock: Clock) -> None:
    client = timed_app(SERVERSESSION_ABSOLUTE_LIFETIME=HOUR).test_client()
    client.post("/set", json={"a": 1})
    assert expires_of(client) == clock.now + HOUR


def test_expired_session_gives_a_fresh_one_with_a_new_id(timed_app: t.Any, clock: Clock) -> None:
    client = timed_app(SERVERSESSION_EXPIRE_TIME=HOUR).test_client()
    client.post("/set", json={"a": 1})
    old = session_cookie(client)
    clock.advance(minutes=61)
    assert client.get("/meta").json["new"] is True
    client.post("/set", json={"b": 2})
    assert session_cookie(client) not in (None, old)
    assert client.get("/dump").json == {"b": 2}


def test_expired_session_is_not_revived_by_a_write(timed_app: t.Any, clock: Clock) -> None:
    app = timed_app(SERVERSESSION_EXPIRE_TIME=HOUR)
    client = app.test_client()
    client.post("/set", json={"a": 1})
    clock.advance(minutes=61)
    client.post("/set", json={"a": 2})
    with app.app_context():
        assert store_of(app).count() == 1
        assert [data for _, data in store_of(app).items()] == [{"a": 2}]


def test_programmatic_get_of_expired_session_raises(timed_app: t.Any, clock: Clock) -> None:
    app = timed_app(SERVERSESSION_EXPIRE_TIME=HOUR)
    extension = ServerSession()
    with app.app_context():
        token = extension.create({"a": 1})
        clock.advance(hours=2)
        with pytest.raises(SessionExpiredError):
            extension.get(token)
        assert extension.purge_expired() == 1


def test_non_permanent_cookie_has_no_expiry(timed_app: t.Any) -> None:
    client = timed_app(SERVERSESSION_PERMANENT=False).test_client()
    response = client.post("/set", json={"a": 1})
    assert cookie_expiry(response) is None
    assert client.get("/meta").json["permanent"] is False


def test_permanent_flag_per_session(timed_app: t.Any, clock: Clock) -> None:
    app = timed_app(SERVERSESSION_PERMANENT=False)

    @app.post("/remember-me")
    def remember() -> str:
        session["user"] = "alice"
        session.permanent = True
        return "remembered"

    client = app.test_client()
    response = client.post("/remember-me")
    assert cookie_expiry(response) == clock.now + 24 * HOUR
    assert client.get("/meta").json["permanent"] is True
