"""Rotation (docs: rotation.rst): a session's id changes every SERVERSESSION_ROTATE_EVERY
with no sign-out, and a rotated-out token that comes back after its grace ends the
session; on every backend, with races made deterministic by parked requests."""

from __future__ import annotations

import typing as t
from datetime import timedelta

import pytest
from flask import Flask
from flask import session
from flask.testing import FlaskClient

from flask_serversession import ServerSession
from flask_serversession import SessionNotFoundError
from flask_serversession import signals
from flask_serversession.backends.base import Backend

from .conftest import Clock
from .conftest import CountingBackend
from .conftest import session_cookie
from .conftest import store_of
from .support.rotation_events import Events
from .test_races import add_parked_write
from .test_races import Parked

EVERY = timedelta(hours=1)
GRACE = timedelta(seconds=60)


def rotating_app(make_app: t.Callable[..., Flask], backend: Backend, **config: t.Any) -> Flask:
    app = make_app(backend, **{"SERVERSESSION_ROTATE_EVERY": EVERY, **config})
    store_of(app).clock = Clock()
    add_parked_write(app)
    return app


@pytest.fixture
def app(make_app: t.Callable[..., Flask], backend: Backend) -> Flask:
    return rotating_app(make_app, backend)


def clock_of(app: Flask) -> Clock:
    return t.cast(Clock, store_of(app).clock)


def key_for(app: Flask, token: str | None) -> str:
    store = store_of(app)
    return store.storage_key(t.cast(str, store.sid_from(token)))


def holder(app: Flask, token: str) -> FlaskClient:
    """Another client (a tab, a thief) that holds ``token``."""
    client = app.test_client()
    client.set_cookie("session", token)
    return client


def signed_in(app: Flask) -> tuple[FlaskClient, str]:
    client = app.test_client()
    client.post("/set", json={"user": "alice"})
    return client, t.cast(str, session_cookie(client))


def live(app: Flask) -> list[dict[str, t.Any]]:
    with app.app_context():
        return [data for _key, data in store_of(app).items()]


def test_a_session_gets_a_new_id_and_keeps_everything(app: Flask, events: Events) -> None:
    client, old = signed_in(app)
    created_at = client.get("/meta").json["created_at"]
    clock_of(app).advance(minutes=59)
    assert client.get("/dump").json == {"user": "alice"}
    assert session_cookie(client) == old
    clock_of(app).advance(minutes=2)
    assert client.get("/dump").json == {"user": "alice"}
    new = session_cookie(client)
    assert new not in (None, old)
    assert client.get("/meta").json["created_at"] == created_at
    assert events.rotated == [
        {"old_storage_key": key_for(app, old), "storage_key": key_for(app, new)}
    ]
    assert live(app) == [{"user": "alice"}]
    with app.app_context():
        assert store_of(app).count() == 1


def test_an_old_token_opens_the_session_until_the_new_one_is_used_and_the_grace_passed(
    app: Flask, events: Events
) -> None:
    _client, old = signed_in(app)
    clock = clock_of(app)
    clock.advance(minutes=61)
    # The response that carried the new token never arrived.
    lost = holder(app, old)
    lost.get("/dump")
    new = session_cookie(lost)
    clock.advance(minutes=30)
    tab = holder(app, old)
    assert tab.get("/dump").json == {"user": "alice"}
    assert session_cookie(tab) == new  # the tab is handed the new token
    # Writes through the old token land in the one session.
    assert holder(app, old).post("/set", json={"cart": ["tea"]}).status_code == 200
    assert live(app) == [{"user": "alice", "cart": ["tea"]}]

    assert tab.get("/dump").json == {"user": "alice", "cart": ["tea"]}  # the new token is used
    clock.advance(seconds=59)
    assert holder(app, old).get("/dump").json == {"user": "alice", "cart": ["tea"]}
    assert events.reused == []
    clock.advance(seconds=2)
    assert holder(app, old).get("/dump").json == {}
    assert events.reused == [
        {"storage_key": key_for(app, new), "reused_storage_key": key_for(app, old)}
    ]
    # Ended for the holder of the new token too: the owner signs in again.
    assert tab.get("/dump").json == {}
    assert live(app) == []


def test_reuse_only_reports_without_revoke_on_reuse(
    make_app: t.Callable[..., Flask], backend: Backend, events: Events
) -> None:
    app = rotating_app(make_app, backend, SERVERSESSION_REVOKE_ON_REUSE=False)
    client, old = signed_in(app)
    clock_of(app).advance(minutes=61)
    client.get("/dump")
    client.get("/dump")
    clock_of(app).advance(minutes=2)
    thief = holder(app, old)
    assert thief.get("/dump").json == {}
    assert len(events.reused) == 1
    assert client.get("/dump").json == {"user": "alice"}


def test_a_stolen_cookie_used_after_the_owners_rotation_ends_the_session(
    app: Flask, events: Events
) -> None:
    owner, stolen = signed_in(app)
    clock = clock_of(app)
    for _ in range(3):
        clock.advance(minutes=61)
        assert owner.get("/dump").json == {"user": "alice"}
        assert owner.get("/dump").json == {"user": "alice"}
    # The copy is three rotations old: it opens nothing, and says nothing.
    assert holder(app, stolen).get("/dump").json == {}
    assert events.reused == []

    fresh = t.cast(str, session_cookie(owner))
    clock.advance(minutes=61)
    owner.get("/dump")
    owner.get("/dump")
    clock.advance(minutes=5)
    assert holder(app, fresh).get("/dump").json == {}
    assert len(events.reused) == 1
    assert owner.get("/dump").json == {}


def test_a_stolen_cookie_used_first_is_shared_until_the_owner_returns(app: Flask) -> None:
    # The limit: a thief who rotates first gets the new token; the owner's
    # old one still opens the session within the grace, so both hold it.
    owner, stolen = signed_in(app)
    clock_of(app).advance(minutes=61)
    thief = holder(app, stolen)
    assert thief.get("/dump").json == {"user": "alice"}
    assert owner.get("/dump").json == {"user": "alice"}
    assert session_cookie(owner) == session_cookie(thief)


def test_two_rotations_at_once_make_one_new_id(app: Flask, events: Events) -> None:
    _client, old = signed_in(app)
    clock_of(app).advance(minutes=61)
    with Parked(app, old, "/parked/write") as first:
        other = holder(app, old)
        assert other.post("/set", json={"other": "tab"}).status_code == 200
    assert first.error is None and first.response.status_code == 200
    new = session_cookie(other)
    assert new is not None and session_cookie(first.client) == new
    assert live(app) == [{"user": "alice", "other": "tab", "late": "write"}]
    assert len(events.rotated) == 1


def test_a_write_in_flight_during_a_rotation_lands_in_the_new_session(app: Flask) -> None:
    client, old = signed_in(app)
    clock_of(app).advance(minutes=59)
    with Parked(app, old, "/parked/write") as in_flight:
        clock_of(app).advance(minutes=2)
        assert client.get("/dump").json == {"user": "alice"}  # rotates
    assert in_flight.error is None
    assert session_cookie(in_flight.client) == session_cookie(client)
    assert live(app) == [{"user": "alice", "late": "write"}]


def test_a_sign_out_during_a_rotation_stays_signed_out(app: Flask) -> None:
    _client, old = signed_in(app)
    clock_of(app).advance(minutes=61)
    with Parked(app, old, "/parked/write") as rotating:
        assert holder(app, old).post("/destroy").status_code == 200
    assert rotating.error is None
    assert live(app) == []
    assert holder(app, old).get("/dump").json == {}


def test_sign_out_through_an_old_token_ends_the_session(app: Flask) -> None:
    client, old = signed_in(app)
    clock_of(app).advance(minutes=61)
    client.get("/dump")
    assert holder(app, old).post("/destroy").status_code == 200
    assert live(app) == []
    assert client.get("/dump").json == {}


def test_regenerate_stays_immediate(app: Flask) -> None:
    client, old = signed_in(app)
    clock_of(app).advance(minutes=61)
    client.post("/regenerate")
    assert holder(app, old).get("/dump").json == {}
    # The new id of a sign-in counts from the sign-in.
    clock_of(app).advance(minutes=59)
    regenerated = session_cookie(client)
    client.get("/dump")
    assert session_cookie(client) == regenerated


def test_a_request_that_does_not_rotate_costs_nothing_more(
    make_app: t.Callable[..., Flask],
) -> None:
    calls = []
    for every in (None, EVERY):
        backend = CountingBackend()
        app = make_app(backend, SERVERSESSION_ROTATE_EVERY=every)
        client = app.test_client()
        client.post("/set", json={"user": "alice"})
        client.get("/dump")
        client.post("/set", json={"cart": [1]})
        client.get("/untouched")
        calls.append(dict(backend.calls))
    assert calls[0] == calls[1]


def test_header_mode_hands_the_new_token_over(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = rotating_app(make_app, backend, SERVERSESSION_HEADER_NAME="X-Session-Token")
    api = app.test_client(use_cookies=False)
    token = api.post("/set", json={"user": "bot"}).headers["X-Session-Token"]
    clock_of(app).advance(minutes=61)
    response = api.get("/dump", headers={"X-Session-Token": token})
    new = response.headers["X-Session-Token"]
    assert new != token and response.json == {"user": "bot"}
    response = api.get("/dump", headers={"X-Session-Token": token})
    assert response.headers["X-Session-Token"] == new


def test_a_user_has_one_session_across_rotations(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    from .support.users import needs_user_index

    needs_user_index(backend)
    app = rotating_app(make_app, backend, SERVERSESSION_USER_KEY="user")
    client, old = signed_in(app)
    clock_of(app).advance(minutes=61)
    client.get("/dump")
    with app.app_context():
        (info,) = ServerSession().user_sessions("alice")
        assert info.storage_key == key_for(app, session_cookie(client))
        assert ServerSession().revoke_user("alice", keep_current=False) == 1
    assert client.get("/dump").json == {}
    assert holder(app, old).get("/dump").json == {}


def test_rotation_settings_are_validated(make_app: t.Callable[..., Flask]) -> None:
    from flask_serversession import ConfigError

    for config in (
        {"SERVERSESSION_ROTATE_EVERY": 0},
        {"SERVERSESSION_ROTATE_EVERY": "1h"},
        {"SERVERSESSION_ROTATE_GRACE": -1},
        {"SERVERSESSION_REVOKE_ON_REUSE": "yes"},
    ):
        with pytest.raises(ConfigError, match=next(iter(config))):
            make_app(**config)


def test_docs_settings_and_the_reuse_alert(
    make_app: t.Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    app = make_app(
        SERVERSESSION_ROTATE_EVERY=timedelta(hours=1),
        SERVERSESSION_ROTATE_GRACE=timedelta(seconds=60),
        SERVERSESSION_REVOKE_ON_REUSE=True,
    )
    store_of(app).clock = Clock()
    security = logging.getLogger("security")

    def report_reuse(app: Flask, storage_key: str, reused_storage_key: str) -> None:
        security.warning(
            "session %s: a rotated-out token (%s) came back",
            storage_key[:12],
            reused_storage_key[:12],
        )

    signals.session_token_reused.connect(report_reuse)
    try:
        caplog.set_level(logging.WARNING, logger="security")
        owner, stolen = signed_in(app)
        clock_of(app).advance(hours=1)
        owner.get("/dump")
        new = session_cookie(owner)
        owner.get("/dump")
        clock_of(app).advance(seconds=61)
        assert holder(app, stolen).get("/dump").json == {}
        (message,) = [r.getMessage() for r in caplog.records if r.name == "security"]
        assert message == (
            f"session {key_for(app, new)[:12]}: a rotated-out token"
            f" ({key_for(app, stolen)[:12]}) came back"
        )
        assert stolen not in message and t.cast(str, new) not in message
    finally:
        signals.session_token_reused.disconnect(report_reuse)


def test_the_api_follows_a_rotation_within_the_grace(app: Flask, events: Events) -> None:
    client, old = signed_in(app)
    clock_of(app).advance(minutes=61)
    client.get("/dump")
    with app.app_context():
        assert ServerSession().get(old) == {"user": "alice"}
    client.get("/dump")  # the new token is used
    clock_of(app).advance(minutes=2)
    with app.app_context(), pytest.raises(SessionNotFoundError):
        ServerSession().get(old)
    assert len(events.reused) == 1
    assert client.get("/dump").json == {}


def test_id_given_at_is_when_the_current_id_was_given(app: Flask) -> None:
    @app.get("/id-given-at")
    def id_given_at() -> str:
        given = session.id_given_at
        return "-" if given is None else given.isoformat()

    client = app.test_client()
    assert client.get("/id-given-at").text == "-"
    client.post("/set", json={"user": "alice"})
    created = clock_of(app).now
    assert client.get("/id-given-at").text == created.isoformat()
    clock_of(app).advance(minutes=61)
    # The request that rotates shows the id it loaded; the next, the new one.
    assert client.get("/id-given-at").text == created.isoformat()
    rotated = clock_of(app).now
    assert client.get("/id-given-at").text == rotated.isoformat()
    clock_of(app).advance(minutes=5)
    client.post("/regenerate")
    assert client.get("/id-given-at").text == clock_of(app).now.isoformat()


def test_docs_id_age(make_app: t.Callable[..., Flask]) -> None:
    from datetime import datetime
    from datetime import timezone

    app = make_app(SERVERSESSION_ROTATE_EVERY=EVERY)

    # docs/rotation.rst, "How old the id is"
    @app.get("/session/age")
    def id_age() -> str:
        given = session.id_given_at
        if given is None:
            return "no session"
        minutes = (datetime.now(timezone.utc) - given).total_seconds() // 60
        return f"this id was given {minutes:.0f} minutes ago"

    clock = Clock()
    clock.advance(minutes=-7)
    store_of(app).clock = clock
    client = app.test_client()
    assert client.get("/session/age").text == "no session"
    client.post("/set", json={"user": "alice"})
    assert client.get("/session/age").text == "this id was given 7 minutes ago"


def test_a_grace_longer_than_the_rotation_keeps_a_sleeping_tab(
    make_app: t.Callable[..., Flask], backend: Backend, events: Events
) -> None:
    app = rotating_app(
        make_app, backend, SERVERSESSION_ROTATE_EVERY=60, SERVERSESSION_ROTATE_GRACE=300
    )
    busy, sleeping = signed_in(app)
    clock = clock_of(app)
    for _ in range(2):
        clock.advance(seconds=61)
        busy.get("/dump")
        busy.get("/dump")
    # Two rotations behind, still within the grace of the id in between.
    clock.advance(seconds=30)
    assert holder(app, sleeping).get("/dump").json == {"user": "alice"}
    assert events.reused == []
    clock.advance(seconds=300)
    assert holder(app, sleeping).get("/dump").json == {}
    assert len(events.reused) == 1
