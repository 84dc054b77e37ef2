"""Adoption never shortens a session (docs: migrating.rst): a session adopted from
Flask-Session or Flask's cookie keeps its expiry, in the cookie and in the
store, up to the absolute cap and 400 days."""

from __future__ import annotations

import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from email.utils import parsedate_to_datetime

import pytest
from flask import Flask

from flask_serversession.backends.redis import RedisBackend

from .conftest import session_cookie
from .conftest import store_of
from .test_adoption import aged_cookie_session
from .test_adoption import cookie_session
from .test_adoption import old_store as old_store
from .test_adoption import OldStore
from .test_adoption import set_cookie_lines

MakeApp = t.Callable[..., Flask]
#: Flask's (and so Flask-Session's) default PERMANENT_SESSION_LIFETIME.
FLASK_LIFETIME = timedelta(days=31)
#: How far apart two clocks read in one test may be: the old store's and ours.
CLOSE = timedelta(minutes=1)


def now() -> datetime:
    return datetime.now(timezone.utc)


def cookie_expires(response: t.Any) -> datetime:
    [line] = set_cookie_lines(response)
    expires = next(p for p in line.split("; ") if p.startswith("Expires="))
    return parsedate_to_datetime(expires.partition("=")[2])


def stored_expiry(app: Flask, backend: RedisBackend, token: str) -> datetime:
    """The expiry of the adopted session in Redis: the record's own, and its TTL.

    Redis drops the hash ``keep_expired`` after the session expires.
    """
    store = store_of(app)
    key = store.storage_key(t.cast(str, store.sid_from(token)))
    ttl = backend.client.pttl(backend.key_prefix + key)
    record = backend.load(key)
    assert record is not None
    by_ttl = now() + timedelta(milliseconds=ttl) - backend.keep_expired
    assert abs(by_ttl - record.expires_at) < CLOSE
    return record.expires_at


def adopt(app: Flask, cookie: str) -> tuple[t.Any, str]:
    client = app.test_client()
    client.set_cookie("session", cookie)
    response = client.get("/dump")
    assert response.status_code == 200
    token = session_cookie(client)
    assert token is not None and token != cookie
    return response, token


def test_a_flask_session_keeps_its_31_days(
    make_app: MakeApp, old_store: OldStore, redis_backend: RedisBackend
) -> None:
    cookie = old_store.sign_in({"user_id": "42"})
    app = old_store.adopting_app(make_app, redis_backend)
    response, token = adopt(app, cookie)
    assert response.json == {"_permanent": True, "user_id": "42"}
    expected = now() + FLASK_LIFETIME
    assert abs(cookie_expires(response) - expected) < CLOSE
    assert abs(stored_expiry(app, redis_backend, token) - expected) < CLOSE


@pytest.mark.parametrize(
    ("config", "lifetime"),
    [
        ({"SERVERSESSION_ABSOLUTE_LIFETIME": timedelta(days=2)}, timedelta(days=2)),
        ({"SERVERSESSION_EXPIRE_TIME": timedelta(days=60)}, timedelta(days=60)),
    ],
)
def test_the_cap_and_a_longer_lifetime_of_ours_win(
    make_app: MakeApp,
    old_store: OldStore,
    redis_backend: RedisBackend,
    config: dict[str, t.Any],
    lifetime: timedelta,
) -> None:
    cookie = old_store.sign_in({"user_id": "42"})
    app = old_store.adopting_app(make_app, redis_backend, **config)
    response, token = adopt(app, cookie)
    expected = now() + lifetime
    assert abs(cookie_expires(response) - expected) < CLOSE
    assert abs(stored_expiry(app, redis_backend, token) - expected) < CLOSE


def test_no_adopted_session_outlives_400_days(
    make_app: MakeApp, old_store: OldStore, redis_backend: RedisBackend
) -> None:
    cookie = old_store.sign_in({"user_id": "42"}, PERMANENT_SESSION_LIFETIME=timedelta(days=1000))
    app = old_store.adopting_app(make_app, redis_backend)
    response, token = adopt(app, cookie)
    expected = now() + timedelta(days=400)
    assert abs(cookie_expires(response) - expected) < CLOSE
    assert abs(stored_expiry(app, redis_backend, token) - expected) < CLOSE


def test_a_flask_cookie_session_keeps_what_it_had_left(
    make_app: MakeApp, redis_backend: RedisBackend
) -> None:
    app = make_app(redis_backend, SERVERSESSION_ADOPT_COOKIE_SESSIONS=True)
    # Signed ten days ago: Flask accepts it for 21 more days.
    cookie = aged_cookie_session({"user_id": "42", "_permanent": True}, timedelta(days=10))
    response, token = adopt(app, cookie)
    expected = now() + FLASK_LIFETIME - timedelta(days=10)
    assert abs(cookie_expires(response) - expected) < CLOSE
    assert abs(stored_expiry(app, redis_backend, token) - expected) < CLOSE


def test_a_browser_session_cookie_keeps_its_expiry_in_the_store(
    make_app: MakeApp, redis_backend: RedisBackend
) -> None:
    app = make_app(redis_backend, SERVERSESSION_ADOPT_COOKIE_SESSIONS=True)
    response, token = adopt(app, cookie_session({"user_id": "42"}))
    [line] = set_cookie_lines(response)
    assert "Expires=" not in line, "not permanent: the cookie ends with the browser"
    expected = now() + FLASK_LIFETIME
    assert abs(stored_expiry(app, redis_backend, token) - expected) < CLOSE


def test_a_lifetime_set_while_adopting_is_kept(
    make_app: MakeApp, redis_backend: RedisBackend
) -> None:
    app = make_app(redis_backend, SERVERSESSION_ADOPT_COOKIE_SESSIONS=True)

    @app.get("/short")
    def short() -> str:
        from flask import session

        session.set_lifetime(timedelta(hours=1))
        return "short"

    client = app.test_client()
    client.set_cookie("session", cookie_session({"user_id": "42"}, permanent=True))
    response = client.get("/short")
    assert abs(cookie_expires(response) - (now() + timedelta(hours=1))) < CLOSE
