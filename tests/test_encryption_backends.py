"""Encryption at rest on every backend: a copy of the store (rows, hashes, files) shows no
session value and no user id, and a sealed value moved in the store does not open."""

from __future__ import annotations

import secrets
import typing as t
from datetime import datetime
from datetime import timezone

import pytest
from flask import Flask

from flask_serversession import BackendError
from flask_serversession import ServerSession
from flask_serversession.backends.base import Backend
from flask_serversession.backends.base import Delta
from flask_serversession.backends.encrypted import EncryptedBackend

from .conftest import session_cookie
from .conftest import store_of
from .support.raw_store import raw_dump
from .support.raw_store import shows
from .support.users import needs_user_index

MakeApp = t.Callable[..., Flask]
KEY = secrets.token_urlsafe(32)
SECRET = "Recognizable-Cart-7d2e"
USER = "bob.builder@example.net"
AGENT = "Recognizable-Browser/4.2"


def storage_key(app: Flask, token: str) -> str:
    store = store_of(app)
    sid = store.sid_from(token)
    assert sid is not None
    return store.storage_key(sid)


def test_a_copy_of_the_store_shows_no_value_and_no_user(
    make_app: MakeApp, backend: Backend
) -> None:
    needs_user_index(backend)
    app = make_app(
        backend,
        SERVERSESSION_ENCRYPTION_KEY=KEY,
        SERVERSESSION_USER_KEY="uid",
        SERVERSESSION_TRACK_CLIENT=True,
    )
    client = app.test_client()
    values = {"cart": SECRET, "uid": USER, "nested": {"deep": [SECRET]}}
    client.post("/set", json=values, headers={"User-Agent": AGENT})
    other = app.test_client()
    other.post("/set", json={"uid": USER})
    other.post("/regenerate")
    dump = raw_dump(backend)
    for secret in (SECRET, USER, AGENT):
        assert shows(dump, secret) == []
    assert client.get("/dump").json == values
    with app.app_context():
        ext = ServerSession()
        assert store_of(app).count() == 2
        infos = ext.user_sessions(USER)
        assert [i.user_id for i in infos] == [USER, USER]
        assert AGENT in {i.user_agent for i in infos}
        assert ext.revoke_user(USER, keep_current=False) == 2
        assert ext.user_sessions(USER) == []
    assert client.get("/get/cart").json == {"value": None}


def test_a_value_moved_in_the_store_does_not_open(make_app: MakeApp, backend: Backend) -> None:
    app = make_app(backend, SERVERSESSION_ENCRYPTION_KEY=KEY)
    with app.app_context():
        ext = ServerSession()
        victim = ext.create({"cart": SECRET, "note": "hello"})
        thief = ext.create({"cart": "mine"})
    wrapper = store_of(app).backend
    assert isinstance(wrapper, EncryptedBackend)
    inner = wrapper.inner
    victim_key, thief_key = storage_key(app, victim), storage_key(app, thief)
    stolen = inner.load(victim_key)
    assert stolen is not None and stolen.data["cart"].startswith("~")
    now = datetime.now(timezone.utc)
    # The victim's sealed cart, copied as it is stored into the thief's session...
    assert inner.update(thief_key, Delta(stolen.expires_at, {"cart": stolen.data["cart"]}), now)
    # ... and into another key of the victim's own.
    assert inner.update(victim_key, Delta(stolen.expires_at, {"note": stolen.data["cart"]}), now)
    with app.app_context():
        ext = ServerSession()
        with pytest.raises(BackendError, match="does not open"):
            ext.get(thief)
        with pytest.raises(BackendError, match="does not open"):
            ext.get(victim)
    client = app.test_client()
    client.set_cookie("session", thief)
    assert client.get("/dump").json == {}


def test_plaintext_sessions_survive_turning_encryption_on(
    make_app: MakeApp, backend: Backend
) -> None:
    plain = make_app(backend).test_client()
    plain.post("/set", json={"cart": SECRET, "other": "kept"})
    token = session_cookie(plain)
    assert token is not None and shows(raw_dump(backend), SECRET)
    app = make_app(backend, SERVERSESSION_ENCRYPTION_KEY=KEY)
    client = app.test_client()
    client.set_cookie("session", token)
    assert client.get("/dump").json == {"cart": SECRET, "other": "kept"}
    client.post("/set", json={"cart": SECRET + "-2"})
    assert client.get("/dump").json == {"cart": SECRET + "-2", "other": "kept"}
    assert not shows(raw_dump(backend), SECRET)


def test_a_sealed_session_rotates_and_races_rotate_once(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    # Rotation writes with a compare-and-set on its stored state, which the
    # store holds sealed: the old token opens the session within its grace
    # and the new token opens it after, on every backend.
    from .test_rotation import clock_of
    from .test_rotation import holder
    from .test_rotation import rotating_app
    from .test_rotation import signed_in

    app = rotating_app(make_app, backend, SERVERSESSION_ENCRYPTION_KEY=KEY)
    client, old = signed_in(app)
    clock_of(app).advance(minutes=61)
    assert client.get("/dump").json == {"user": "alice"}
    new = session_cookie(client)
    assert new not in (None, old)
    assert holder(app, old).get("/dump").json == {"user": "alice"}
    assert holder(app, t.cast(str, new)).get("/dump").json == {"user": "alice"}
    # Two tabs that rotate one session at once hand out the same token.
    clock_of(app).advance(minutes=61)
    first, second = holder(app, t.cast(str, new)), holder(app, t.cast(str, new))
    assert first.get("/dump").json == second.get("/dump").json == {"user": "alice"}
    assert session_cookie(first) == session_cookie(second) not in (None, new)
