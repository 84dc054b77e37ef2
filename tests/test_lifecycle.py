"""A session's own lifetime ("remember me") and the lifecycle signals, on every backend."""

from __future__ import annotations

import time
import typing as t
from datetime import timedelta

import pytest
from flask import Flask
from flask import session

from flask_serversession import ServerSession
from flask_serversession import SessionExpiredError
from flask_serversession import signals
from flask_serversession.backends.base import Backend

from .conftest import Clock
from .conftest import session_cookie
from .conftest import store_of
from .test_protocol import cookie_expires
from .test_protocol import set_cookie_header

DAY = timedelta(days=1)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def lifetime_app(
    make: t.Callable[..., Flask], backend: Backend, clock: Clock, **config: t.Any
) -> Flask:
    app = make(backend, **config)
    store_of(app).clock = clock

    @app.post("/sign-in/<int:remember>")
    def sign_in(remember: int) -> str:
        session["user"] = "alice"
        if remember:
            session.set_lifetime(timedelta(days=30))
        return "signed in"

    @app.post("/forget")
    def forget() -> str:
        session.set_lifetime(None)
        return "forgotten"

    return app


def test_remember_me_gets_its_own_lifetime(
    make_app: t.Callable[..., Flask], backend: Backend, clock: Clock
) -> None:
    app = lifetime_app(make_app, backend, clock)
    remembered = app.test_client()
    header = set_cookie_header(remembered.post("/sign-in/1"))
    assert header is not None and cookie_expires(header) == clock.now + 30 * DAY
    assert remembered.get("/meta").json["expires_at"] == (clock.now + 30 * DAY).isoformat()
    assert remembered.get("/dump").json == {"user": "alice"}

    other = app.test_client()
    header = set_cookie_header(other.post("/sign-in/0"))
    assert header is not None and cookie_expires(header) is None
    assert other.get("/meta").json["expires_at"] == (clock.now + DAY).isoformat()

    # A renewal extends by the session's own span, not SERVERSESSION_RENEW_TIME.
    clock.advance(days=29)
    header = set_cookie_header(remembered.post("/set", json={"visit": 2}))
    assert header is not None and cookie_expires(header) == clock.now + 30 * DAY
    assert other.get("/dump").json == {}


def test_own_lifetime_is_stored_with_the_record(
    make_app: t.Callable[..., Flask], backend: Backend, clock: Clock
) -> None:
    first = lifetime_app(make_app, backend, clock)
    client = first.test_client()
    client.post("/sign-in/1")
    # Another app on the same store, as another worker process would be.
    second = make_app(backend)
    store_of(second).clock = clock
    other_worker = second.test_client()
    other_worker.set_cookie("session", t.cast(str, session_cookie(client)))
    clock.advance(days=10)
    assert other_worker.get("/dump").json == {"user": "alice"}
    other_worker.post("/set", json={"visit": 2})
    assert other_worker.get("/meta").json["expires_at"] == (clock.now + 30 * DAY).isoformat()
    with second.app_context():
        assert [data for _key, data in store_of(second).items()] == [{"user": "alice", "visit": 2}]


def test_absolute_cap_bounds_own_lifetime(
    make_app: t.Callable[..., Flask], backend: Backend, clock: Clock
) -> None:
    app = lifetime_app(make_app, backend, clock, SERVERSESSION_ABSOLUTE_LIFETIME=7 * DAY)
    client = app.test_client()
    client.post("/sign-in/1")
    assert client.get("/meta").json["expires_at"] == (clock.now + 7 * DAY).isoformat()


def test_none_restores_the_app_settings(
    make_app: t.Callable[..., Flask], backend: Backend, clock: Clock
) -> None:
    app = lifetime_app(make_app, backend, clock)
    client = app.test_client()
    client.post("/sign-in/1")
    clock.advance(hours=1)
    header = set_cookie_header(client.post("/forget"))
    assert header is not None and cookie_expires(header) is None
    assert client.get("/meta").json["expires_at"] == (clock.now + DAY).isoformat()
    assert client.get("/dump").json == {"user": "alice"}


@pytest.mark.parametrize("bad", [0, -5, timedelta(0), "30 days", True])
def test_bad_lifetime_is_refused(make_app: t.Callable[..., Flask], bad: t.Any) -> None:
    app = make_app()

    @app.post("/bad")
    def bad_lifetime() -> str:
        session.set_lifetime(bad)
        return "never"

    with pytest.raises(ValueError, match="set_lifetime"):
        app.test_client().post("/bad")


@pytest.mark.parametrize("bad", [timedelta(days=400, seconds=1), 400 * 86400 + 1, 1e300])
def test_lifetime_past_what_browsers_keep_is_refused(
    make_app: t.Callable[..., Flask], bad: t.Any
) -> None:
    app = make_app()

    @app.post("/too-long")
    def too_long() -> str:
        session.set_lifetime(bad)
        return "never"

    with pytest.raises(ValueError, match="400 days"):
        app.test_client().post("/too-long")


def test_lifetime_of_400_days_holds(
    make_app: t.Callable[..., Flask], backend: Backend, clock: Clock
) -> None:
    app = lifetime_app(make_app, backend, clock)

    @app.post("/longest")
    def longest() -> str:
        session["user"] = "alice"
        session.set_lifetime(timedelta(days=400))
        return "longest"

    client = app.test_client()
    header = set_cookie_header(client.post("/longest"))
    assert header is not None and cookie_expires(header) == clock.now + 400 * DAY
    clock.advance(days=399)
    assert client.get("/dump").json == {"user": "alice"}


def sign_in_app(make: t.Callable[..., Flask], backend: Backend, clock: Clock) -> Flask:
    """The sign-in recipe: a new id, and the lifetime the user chose."""
    app = lifetime_app(make, backend, clock)

    @app.post("/sign-in-for/<int:seconds>")
    def sign_in_for(seconds: int) -> str:
        session.regenerate()
        session["user"] = "alice"
        session.set_lifetime(timedelta(seconds=seconds) if seconds else None)
        return "signed in"

    return app


@pytest.mark.parametrize("before", ["fresh", "remembered"])
def test_regenerate_with_a_shorter_lifetime_shortens(
    make_app: t.Callable[..., Flask], backend: Backend, clock: Clock, before: str
) -> None:
    app = sign_in_app(make_app, backend, clock)
    client = app.test_client()
    if before == "remembered":
        client.post("/sign-in/1")
    else:
        client.post("/set", json={"cart": [1]})
    header = set_cookie_header(client.post("/sign-in-for/60"))
    assert header is not None and cookie_expires(header) == clock.now + timedelta(seconds=60)
    assert client.get("/meta").json["expires_at"] == (clock.now + timedelta(seconds=60)).isoformat()
    clock.advance(seconds=61)
    assert client.get("/dump").json == {}


def test_regenerate_with_lifetime_none_restores_the_app_settings(
    make_app: t.Callable[..., Flask], backend: Backend, clock: Clock
) -> None:
    app = sign_in_app(make_app, backend, clock)
    client = app.test_client()
    client.post("/sign-in/1")
    header = set_cookie_header(client.post("/sign-in-for/0"))
    assert header is not None and cookie_expires(header) is None
    assert client.get("/meta").json["expires_at"] == (clock.now + DAY).isoformat()
    clock.advance(days=1, seconds=1)
    assert client.get("/dump").json == {}


# signals


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, t.Any, dict[str, t.Any]]] = []

    def connect(self) -> None:
        for name in ("created", "regenerated", "destroyed", "expired"):
            signal = getattr(signals, f"session_{name}")
            signal.connect(self._receiver(name), weak=False)

    def disconnect(self) -> None:
        for name in ("created", "regenerated", "destroyed", "expired"):
            getattr(signals, f"session_{name}").receivers.clear()

    def _receiver(self, name: str) -> t.Callable[..., None]:
        def receive(sender: t.Any, **kwargs: t.Any) -> None:
            self.events.append((name, sender, kwargs))

        return receive


@pytest.fixture
def recorder() -> t.Iterator[Recorder]:
    recorder = Recorder()
    recorder.connect()
    yield recorder
    recorder.disconnect()


def test_lifecycle_signals_carry_storage_keys(
    make_app: t.Callable[..., Flask], backend: Backend, clock: Clock, recorder: Recorder
) -> None:
    app = make_app(backend)
    store = store_of(app)
    store.clock = clock

    def key_of(client: t.Any) -> str:
        return store.storage_key(t.cast(str, store.sid_from(session_cookie(client))))

    client = app.test_client()
    client.post("/set", json={"user": "alice"})
    first = key_of(client)
    client.post("/regenerate")
    second = key_of(client)
    client.post("/destroy")
    expiring = app.test_client()
    expiring.post("/set", json={"a": 1})
    third = key_of(expiring)
    clock.advance(days=2)
    assert expiring.get("/dump").json == {}

    named = [(name, kwargs) for name, _sender, kwargs in recorder.events]
    assert named == [
        ("created", {"storage_key": first}),
        ("regenerated", {"old_storage_key": first, "storage_key": second}),
        ("destroyed", {"storage_key": second}),
        ("created", {"storage_key": third}),
        ("expired", {"storage_key": third}),
    ]
    assert all(sender is app for _name, sender, _kwargs in recorder.events)


def test_expiry_is_signalled_in_real_time_on_every_backend(
    make_app: t.Callable[..., Flask], backend: Backend, recorder: Recorder
) -> None:
    # The store's own clock, not a test one: Redis expires its keys by the
    # server's time, and the signal must still reach an audit log there.
    app = make_app(backend, SERVERSESSION_EXPIRE_TIME=1)
    store = store_of(app)
    client = app.test_client()
    client.post("/set", json={"a": 1})
    key = store.storage_key(t.cast(str, store.sid_from(session_cookie(client))))
    expires_at = store.clock() + timedelta(seconds=1)
    deadline = time.monotonic() + 10
    while store.clock() <= expires_at + timedelta(milliseconds=50):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    response = client.get("/dump")
    assert response.json == {}
    assert "Expires=Thu, 01 Jan 1970" in response.headers["Set-Cookie"]
    assert [(name, kwargs) for name, _sender, kwargs in recorder.events][-1] == (
        "expired",
        {"storage_key": key},
    )


def test_api_calls_send_signals(
    make_app: t.Callable[..., Flask], clock: Clock, recorder: Recorder
) -> None:
    app = make_app()
    store_of(app).clock = clock
    extension = ServerSession()
    with app.app_context():
        token = extension.create({"a": 1})
        extension.delete(token)
        expired = extension.create({"b": 2})
        clock.advance(days=2)
        with pytest.raises(SessionExpiredError):
            extension.get(expired)
    assert [name for name, _sender, _kwargs in recorder.events] == [
        "created",
        "destroyed",
        "created",
        "expired",
    ]
    tokens = {token, expired}
    for _name, _sender, kwargs in recorder.events:
        assert not set(kwargs.values()) & tokens
