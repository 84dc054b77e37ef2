"""Requests of one session that race, made deterministic: one request is parked
inside its view while another runs to the end, on every backend."""

from __future__ import annotations

import threading
import typing as t

import pytest
from flask import Flask
from flask import session

from flask_serversession import SessionTooLargeError
from flask_serversession.backends.base import Backend
from flask_serversession.backends.base import data_size

from .conftest import session_cookie
from .conftest import store_of

WAIT = 10.0


class Parked:
    """Runs a request in a thread that stops inside the view until released."""

    def __init__(self, app: Flask, token: str, path: str, json: t.Any = None) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()
        self.response: t.Any = None
        self.error: BaseException | None = None
        self.client = app.test_client()
        self.client.set_cookie("session", token)
        app.config.setdefault("PARKED", {})[path] = self
        self._thread = threading.Thread(target=self._run, args=(path, json))

    def _run(self, path: str, json: t.Any) -> None:
        try:
            self.response = self.client.post(path, json=json)
        except BaseException as e:
            self.error = e
            self.inside.set()

    def __enter__(self) -> Parked:
        self._thread.start()
        assert self.inside.wait(WAIT), "the parked request never reached its view"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._thread.join(WAIT)
        assert not self._thread.is_alive()


def add_parked_write(app: Flask) -> None:
    """A view that reads the session, parks, then writes ``late``."""

    @app.post("/parked/write")
    def parked_write() -> str:
        session.get("user")
        park("/parked/write")
        session["late"] = "write"
        return "written"


def add_parked_grow(app: Flask) -> None:
    """A view that reads the session, parks, then writes 600 bytes under ``a``."""

    @app.post("/parked/grow")
    def parked_grow() -> str:
        session.get("user")
        park("/parked/grow")
        session["a"] = "x" * 600
        return "grown"


def park(path: str) -> None:
    parked: Parked = session_app().config["PARKED"][path]
    parked.inside.set()
    assert parked.release.wait(WAIT)


def session_app() -> Flask:
    from flask import current_app

    return t.cast(Flask, current_app._get_current_object())  # type: ignore[attr-defined]


@pytest.fixture
def race_app(make_app: t.Callable[..., Flask], backend: Backend) -> Flask:
    app = make_app(backend, SERVERSESSION_MAX_SIZE=1000)

    @app.post("/parked/regenerate")
    def parked_regenerate() -> str:
        session.regenerate()
        session["signed_in"] = True
        park("/parked/regenerate")
        return "regenerated"

    add_parked_write(app)
    add_parked_grow(app)
    return app


def signed_in(app: Flask) -> tuple[t.Any, str]:
    client = app.test_client()
    client.post("/set", json={"user": "alice"})
    token = session_cookie(client)
    assert token is not None
    return client, token


def stored(app: Flask) -> list[dict[str, t.Any]]:
    with app.app_context():
        return [data for _key, data in store_of(app).items()]


def test_sign_out_during_regenerate_stays_signed_out(race_app: Flask) -> None:
    client, token = signed_in(race_app)
    with Parked(race_app, token, "/parked/regenerate") as login:
        client.post("/destroy")
    assert login.error is None and login.response.status_code == 200
    assert stored(race_app) == []
    regenerated = session_cookie(login.client)
    if regenerated:
        fresh = race_app.test_client()
        fresh.set_cookie("session", regenerated)
        assert fresh.get("/dump").json == {}


def test_regenerate_keeps_a_write_that_landed_meanwhile(race_app: Flask) -> None:
    client, token = signed_in(race_app)
    with Parked(race_app, token, "/parked/regenerate") as login:
        assert client.post("/set", json={"theme": "dark"}).status_code == 200
    new_token = session_cookie(login.client)
    assert new_token and new_token != token
    assert stored(race_app) == [{"user": "alice", "theme": "dark", "signed_in": True}]
    old = race_app.test_client()
    old.set_cookie("session", token)
    assert old.get("/dump").json == {}


def test_write_during_regenerate_does_not_revive_the_old_id(race_app: Flask) -> None:
    client, token = signed_in(race_app)
    with Parked(race_app, token, "/parked/write") as write:
        client.post("/regenerate")
    assert write.response.status_code == 200
    assert stored(race_app) == [{"user": "alice"}]
    old = race_app.test_client()
    old.set_cookie("session", token)
    assert old.get("/dump").json == {}


def test_writes_to_different_keys_both_survive(race_app: Flask) -> None:
    client, token = signed_in(race_app)
    with Parked(race_app, token, "/parked/write"):
        client.post("/set", json={"theme": "dark"})
    assert client.get("/dump").json == {"user": "alice", "theme": "dark", "late": "write"}


def test_concurrent_growth_cannot_pass_max_size(race_app: Flask) -> None:
    client, token = signed_in(race_app)
    with Parked(race_app, token, "/parked/grow") as grow:
        assert client.post("/set", json={"b": "y" * 600}).status_code == 200
    assert isinstance(grow.error, SessionTooLargeError)
    with race_app.app_context():
        store = store_of(race_app)
        key = store.storage_key(t.cast(str, store.sid_from(token)))
        record = store.backend.load(key)
    assert record is not None and data_size(record.data) <= 1000
    assert client.get("/dump").json == {"user": "alice", "b": "y" * 600}
    # The session stays writable: a save that fits goes through.
    assert client.post("/set", json={"b": "short"}).status_code == 200
    assert client.get("/get/b").json == {"value": "short"}


class ParkedTake:
    """Stops a store's first ``take`` right after the record is taken, until released."""

    def __init__(self, backend: Backend) -> None:
        self.taken = threading.Event()
        self.release = threading.Event()
        self._take = backend.take

    def __call__(self, key: str, now: t.Any) -> t.Any:
        record = self._take(key, now)
        if not self.taken.is_set():
            self.taken.set()
            assert self.release.wait(WAIT)
        return record


def test_revoke_during_a_failed_regenerate_stays_revoked(race_app: Flask) -> None:
    @race_app.post("/parked/sign-in")
    def parked_sign_in() -> str:
        session.get("user")
        park("/parked/sign-in")
        session.regenerate()
        session["profile"] = "p" * 500
        return "signed in"

    client, token = signed_in(race_app)
    store = store_of(race_app)
    with race_app.app_context():
        key = store.storage_key(t.cast(str, store.sid_from(token)))
    with Parked(race_app, token, "/parked/sign-in") as sign_in:
        # Another request grows the session: the sign-in's save no longer fits.
        assert client.post("/set", json={"b": "y" * 600}).status_code == 200
        take = ParkedTake(store.backend)
        store.backend.take = take  # type: ignore[method-assign]
        sign_in.release.set()
        assert take.taken.wait(WAIT)
        with race_app.app_context():
            revoked = store.users.revoke(key)
        take.release.set()
    assert isinstance(sign_in.error, SessionTooLargeError)
    # Whatever revoke() answered, the session it meant to end stays ended.
    assert revoked is False
    assert stored(race_app) == []
    assert client.get("/dump").json == {}


def test_regenerate_too_large_for_the_store_takes_nothing(race_app: Flask) -> None:
    @race_app.post("/sign-in/large")
    def sign_in_large() -> str:
        session.regenerate()
        session["profile"] = "p" * 2000
        return "signed in"

    client, token = signed_in(race_app)
    store = store_of(race_app)
    take = ParkedTake(store.backend)
    take.release.set()
    store.backend.take = take  # type: ignore[method-assign]
    with pytest.raises(SessionTooLargeError):
        client.post("/sign-in/large")
    assert not take.taken.is_set()
    assert client.get("/dump").json == {"user": "alice"}
    with race_app.app_context():
        key = store.storage_key(t.cast(str, store.sid_from(token)))
        assert store.users.revoke(key) is True
    assert stored(race_app) == []
