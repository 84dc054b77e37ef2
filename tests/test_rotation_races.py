"""Rotation under races and faults (issue 28): a sign-out, a revoke, a sign-in, a long write
or a store failure landing in the middle of a rotation, forced deterministically with
parked requests and a backend wrapper that stops or fails the rotation's write, on every
backend. The rotation changes only the client's token: the session keeps its storage key."""

from __future__ import annotations

import threading
import typing as t
from datetime import timedelta

import pytest
from flask import Flask
from flask import request
from flask import session

from flask_serversession import BackendError
from flask_serversession import ServerSession
from flask_serversession import SessionNotFoundError
from flask_serversession.backends.base import Backend

from .conftest import session_cookie
from .conftest import store_of
from .support.rotation_events import Events
from .test_races import park
from .test_races import Parked
from .test_rotation import clock_of
from .test_rotation import holder
from .test_rotation import key_for
from .test_rotation import live
from .test_rotation import rotating_app
from .test_rotation import signed_in

WAIT = 10


def add_parked_views(app: Flask) -> None:
    """Views that read the session, park until released, then end or change it."""

    @app.post("/parked/destroy")
    def parked_destroy() -> str:
        session.get("user")
        park("/parked/destroy")
        session.destroy()
        return "signed out"

    @app.post("/parked/clear")
    def parked_clear() -> str:
        session.get("user")
        park("/parked/clear")
        session.clear()
        return "cleared"

    @app.post("/parked/sign-in")
    def parked_sign_in() -> str:
        session.get("user")
        park("/parked/sign-in")
        session.regenerate()
        session["user"] = "alice again"
        return "signed in"

    @app.post("/lifetime")
    def lifetime() -> str:
        seconds = request.get_json()["seconds"]
        session.set_lifetime(None if seconds is None else timedelta(seconds=seconds))
        return "set"


@pytest.fixture
def app(make_app: t.Callable[..., Flask], backend: Backend) -> Flask:
    app = rotating_app(make_app, backend)
    add_parked_views(app)
    return app


def is_rotation_write(name: str, args: tuple[t.Any, ...]) -> bool:
    """Whether a backend call writes a rotation: in 0.3 an update that compares and sets
    the rotation state; before it, the take and create that moved the record."""
    if name == "update":
        return getattr(args[1], "expect", None) is not None
    return name in ("take", "create")


class RotationWrite:
    """Stops, or fails, the first backend call that writes a rotation, right after it ran
    (before 0.3: between the take of the old record and the create of the new one).

    :param fail: raise ``BackendError`` before (``"before"``) or after
        (``"after"``: its reply was lost) the call ran; None to stop until released.
    """

    def __init__(self, backend: Backend, *, fail: str | None = None) -> None:
        self.fail = fail
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        for name in ("update", "take", "create"):
            setattr(backend, name, self._wrap(name, getattr(backend, name)))

    def _wrap(self, name: str, original: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
        def call(*args: t.Any) -> t.Any:
            if self.entered.is_set() or not is_rotation_write(name, args):
                return original(*args)
            self.entered.set()
            self.calls += 1
            if self.fail == "before":
                raise BackendError("the store failed during the rotation (forced)")
            result = original(*args)
            if self.fail is None:
                assert self.release.wait(WAIT)
            if self.fail == "after":
                raise BackendError("the reply to the rotation was lost (forced)")
            return result

        return call


def in_thread(target: t.Callable[[], t.Any]) -> tuple[threading.Thread, list[t.Any]]:
    results: list[t.Any] = []
    thread = threading.Thread(target=lambda: results.append(target()))
    thread.start()
    return thread, results


def cookie_expired(response: t.Any) -> bool:
    return any("session=;" in v for v in response.headers.getlist("Set-Cookie"))


@pytest.mark.parametrize("path", ["/parked/destroy", "/parked/clear"])
def test_1_a_sign_out_ends_a_session_that_rotated_meanwhile(app: Flask, path: str) -> None:
    client, old = signed_in(app)
    clock_of(app).advance(minutes=61)
    with Parked(app, old, path) as sign_out:
        assert client.get("/dump").json == {"user": "alice"}  # rotates
        assert session_cookie(client) != old
    assert sign_out.error is None and sign_out.response.status_code == 200
    assert live(app) == []
    assert client.get("/dump").json == {}
    assert holder(app, old).get("/dump").json == {}


@pytest.mark.parametrize("fail", ["before", "after"])
def test_2_a_store_failure_during_a_rotation_keeps_the_session(app: Flask, fail: str) -> None:
    client, old = signed_in(app)
    clock_of(app).advance(minutes=61)
    RotationWrite(store_of(app).backend, fail=fail)
    response = client.post("/set", json={"cart": ["tea"]})
    assert response.status_code == 503
    assert session_cookie(client) == old  # the cookie is left alone
    expected = {"user": "alice"} if fail == "before" else {"user": "alice", "cart": ["tea"]}
    assert live(app) == [expected]
    # The session is still there for the token the client holds.
    assert client.get("/dump").json == expected
    assert session_cookie(client) != old
    assert client.get("/dump").json == expected
    with app.app_context():
        assert store_of(app).count() == 1


def users_app(make_app: t.Callable[..., Flask], backend: Backend, **config: t.Any) -> Flask:
    from .support.users import needs_user_index

    needs_user_index(backend)
    return rotating_app(make_app, backend, SERVERSESSION_USER_KEY="user", **config)


class RotateAfterListing:
    """Rotates a session (through ``client``) right after the backend listed a user's
    sessions, before the caller acts on the list."""

    def __init__(self, app: Flask, client: t.Any) -> None:
        self.done = False
        backend = store_of(app).backend
        original = backend.user_records

        def user_records(user: str, now: t.Any) -> t.Any:
            listed = original(user, now)
            if not self.done:
                self.done = True
                old = session_cookie(client)
                # Another request of the same browser, in another thread.
                thread, _ = in_thread(lambda: client.get("/dump"))
                thread.join(WAIT)
                assert session_cookie(client) != old
            return listed

        backend.user_records = user_records  # type: ignore[method-assign]


def test_3_sign_out_everywhere_ends_a_session_rotating_between_listing_and_revoke(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = users_app(make_app, backend)
    attacker, stolen = signed_in(app)
    clock_of(app).advance(minutes=61)
    RotateAfterListing(app, attacker)
    with app.app_context():
        assert ServerSession().revoke_user("alice", keep_current=False) == 1
    assert attacker.get("/dump").json == {}
    assert holder(app, stolen).get("/dump").json == {}
    assert live(app) == []


def test_3_the_cap_holds_for_a_session_rotating_between_listing_and_revoke(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = users_app(make_app, backend, SERVERSESSION_MAX_SESSIONS_PER_USER=2)
    oldest, _ = signed_in(app)
    clock_of(app).advance(minutes=30)
    signed_in(app)
    clock_of(app).advance(minutes=31)
    RotateAfterListing(app, oldest)
    signed_in(app)  # a third sign-in: the least recently seen goes
    with app.app_context():
        assert len(ServerSession().user_sessions("alice")) == 2
    assert len(live(app)) == 2


def test_4_a_request_meeting_a_rotation_in_progress_is_never_signed_out(app: Flask) -> None:
    _client, old = signed_in(app)
    clock_of(app).advance(minutes=61)
    write = RotationWrite(store_of(app).backend)
    rotating = holder(app, old)
    thread, _ = in_thread(lambda: rotating.get("/dump"))
    assert write.entered.wait(WAIT)
    other = holder(app, old)
    response = other.get("/dump")
    assert response.json == {"user": "alice"}
    assert not cookie_expired(response)
    write.release.set()
    thread.join(WAIT)
    assert session_cookie(rotating) not in (None, old)
    assert live(app) == [{"user": "alice"}]


@pytest.mark.parametrize("lifetime", [300, None])
def test_5_a_lifetime_set_in_a_rotating_request_holds(app: Flask, lifetime: int | None) -> None:
    client = app.test_client()
    client.post("/set", json={"user": "alice"})
    client.post(
        "/lifetime", json={"seconds": 48 * 3600}
    )  # "remember me": longer than the app's 24 h
    clock = clock_of(app)
    clock.advance(minutes=61)
    old = session_cookie(client)
    assert client.post("/lifetime", json={"seconds": lifetime}).status_code == 200
    assert session_cookie(client) != old  # it rotated
    expires_at = client.get("/meta").json["expires_at"]
    span = timedelta(seconds=lifetime) if lifetime is not None else timedelta(hours=24)
    assert expires_at == (clock.now + span).isoformat()


def test_6_a_session_near_its_size_limit_still_rotates(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = rotating_app(make_app, backend, SERVERSESSION_MAX_SIZE=1000)
    client = app.test_client()
    # 4 + 2 + 990 bytes: 4 bytes below the limit.
    assert client.post("/set", json={"blob": "x" * 990}).status_code == 200
    old = session_cookie(client)
    clock_of(app).advance(minutes=61)
    response = client.get("/dump")
    assert response.status_code == 200 and response.json == {"blob": "x" * 990}
    assert session_cookie(client) != old
    assert client.get("/dump").status_code == 200
    clock_of(app).advance(minutes=61)
    assert client.get("/dump").status_code == 200


def test_7_a_sign_in_racing_a_rotation_stays_signed_in(app: Flask) -> None:
    client, old = signed_in(app)
    clock_of(app).advance(minutes=61)
    with Parked(app, old, "/parked/sign-in") as sign_in:
        assert client.get("/dump").json == {"user": "alice"}  # rotates
    assert sign_in.error is None and sign_in.response.status_code == 200
    signed = session_cookie(sign_in.client)
    assert signed not in (None, old, session_cookie(client))
    assert holder(app, t.cast(str, signed)).get("/dump").json == {"user": "alice again"}
    assert live(app) == [{"user": "alice again"}]


def test_7_a_rotation_racing_a_sign_in_leaves_the_sign_in_alone(app: Flask) -> None:
    _client, old = signed_in(app)
    clock_of(app).advance(minutes=61)
    write = RotationWrite(store_of(app).backend)
    rotating = holder(app, old)
    thread, results = in_thread(lambda: rotating.get("/dump"))
    assert write.entered.wait(WAIT)
    sign_in = holder(app, old)
    assert sign_in.post("/regenerate").status_code == 200
    write.release.set()
    thread.join(WAIT)
    assert results[0].status_code == 200 and not cookie_expired(results[0])
    signed = t.cast(str, session_cookie(sign_in))
    assert holder(app, signed).get("/dump").json == {"user": "alice"}
    assert live(app) == [{"user": "alice"}]


class CountingLoads:
    def __init__(self, backend: Backend) -> None:
        self.count = 0
        original = backend.load

        def load(key: str) -> t.Any:
            self.count += 1
            return original(key)

        backend.load = load  # type: ignore[method-assign]


def test_8_a_token_of_an_ended_session_costs_one_load_and_no_wait(app: Flask) -> None:
    client, old = signed_in(app)
    clock_of(app).advance(minutes=61)
    client.get("/dump")
    rotated = t.cast(str, session_cookie(client))
    client.post("/destroy")
    loads = CountingLoads(store_of(app).backend)
    for token in (old, rotated):
        response = holder(app, token).get("/dump")
        assert response.json == {} and cookie_expired(response)
    assert loads.count == 2


def test_9_a_token_reported_as_reused_never_opens_the_session_again(
    make_app: t.Callable[..., Flask], backend: Backend, events: Events
) -> None:
    app = rotating_app(make_app, backend, SERVERSESSION_REVOKE_ON_REUSE=False)
    owner, stolen = signed_in(app)
    clock = clock_of(app)
    clock.advance(minutes=61)
    owner.get("/dump")
    owner.get("/dump")
    clock.advance(minutes=2)
    assert holder(app, stolen).get("/dump").json == {}
    assert len(events.reused) == 1
    clock.advance(minutes=61)
    owner.get("/dump")  # the owner's next rotation
    assert holder(app, stolen).get("/dump").json == {}
    owner.get("/dump")
    assert holder(app, stolen).get("/dump").json == {}
    assert owner.get("/dump").json == {"user": "alice"}


def test_9_a_reuse_racing_the_owners_rotation_is_revoked(app: Flask, events: Events) -> None:
    owner, stolen = signed_in(app)
    clock = clock_of(app)
    clock.advance(minutes=61)
    owner.get("/dump")
    owner.get("/dump")
    clock.advance(minutes=61)
    write = RotationWrite(store_of(app).backend)
    thread, _ = in_thread(lambda: owner.get("/dump"))  # the owner's next rotation
    assert write.entered.wait(WAIT)
    assert holder(app, stolen).get("/dump").json == {}
    write.release.set()
    thread.join(WAIT)
    assert len(events.reused) == 1
    assert live(app) == []
    assert owner.get("/dump").json == {}


def test_10_a_write_that_outlives_two_rotations_lands(app: Flask) -> None:
    client, old = signed_in(app)
    clock = clock_of(app)
    with Parked(app, old, "/parked/write") as in_flight:
        for _ in range(2):
            clock.advance(minutes=61)
            assert client.get("/dump").json == {"user": "alice"}
            client.get("/dump")
    assert in_flight.error is None and in_flight.response.status_code == 200
    assert live(app) == [{"user": "alice", "late": "write"}]
    assert client.get("/dump").json == {"user": "alice", "late": "write"}


def test_11_a_rolling_secret_key_deploy_keeps_rotated_sessions(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    old_server = rotating_app(make_app, backend, SECRET_KEY="old key")
    new_server = rotating_app(
        make_app, backend, SECRET_KEY="new key", SECRET_KEY_FALLBACKS=["old key"]
    )
    clock_of(new_server).now = clock_of(old_server).now
    _client, first = signed_in(old_server)
    for server in (old_server, new_server):
        clock_of(server).advance(minutes=61)
    # The new server rotates; the old token still reaches the old server.
    assert holder(new_server, first).get("/dump").json == {"user": "alice"}
    rotated = holder(new_server, first)
    assert rotated.get("/dump").json == {"user": "alice"}
    response = holder(old_server, first).get("/dump")
    assert response.json == {"user": "alice"} and not cookie_expired(response)
    # A token the new server signed is left alone by the old one, and opens on the new one.
    newest = t.cast(str, session_cookie(rotated))
    response = holder(old_server, newest).get("/dump")
    assert response.json == {} and not cookie_expired(response)
    assert holder(new_server, newest).get("/dump").json == {"user": "alice"}
    assert len(live(new_server)) == 1


def test_12_a_zero_grace_with_rotation_is_refused(make_app: t.Callable[..., Flask]) -> None:
    from flask_serversession import ConfigError

    with pytest.raises(ConfigError, match=r"SERVERSESSION_ROTATE_GRACE = 0 .*30 seconds"):
        make_app(SERVERSESSION_ROTATE_EVERY=3600, SERVERSESSION_ROTATE_GRACE=0)
    make_app(SERVERSESSION_ROTATE_GRACE=0)  # without rotation it means nothing


def test_13_delete_through_an_old_token_ends_the_session(app: Flask) -> None:
    client, old = signed_in(app)
    clock_of(app).advance(minutes=61)
    client.get("/dump")
    with app.app_context():
        ServerSession().delete(old)
        with pytest.raises(SessionNotFoundError):
            ServerSession().get(t.cast(str, session_cookie(client)))
    assert client.get("/dump").json == {}
    assert live(app) == []


def test_a_rotation_keeps_the_storage_key_and_stores_no_token(app: Flask, events: Events) -> None:
    client, old = signed_in(app)
    key = key_for(app, old)
    for _ in range(3):
        clock_of(app).advance(minutes=61)
        client.get("/dump")
        client.get("/dump")
    token = t.cast(str, session_cookie(client))
    assert key_for(app, token) == key
    assert [e["storage_key"] for e in events.rotated] == [key] * 3
    # A copy of the store holds neither the id nor any secret it ever had.
    store = store_of(app)
    with app.app_context():
        sid, secret, _ = store.tokens.parse(token)
        record = store.backend.load(key)
    assert record is not None and sid is not None and secret is not None
    stored = repr(record.data)
    assert sid not in stored and secret not in stored
