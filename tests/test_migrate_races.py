"""Moving between stores under races (docs: migrating.rst, "Moving between stores").

A move adds the session to the current store before it takes it from the
old one, so no lookup waits and none misses a session another process is
moving; a sign-out landing mid-move stays a sign-out. Each interleaving is
forced by holding one thread at a chosen backend call."""

from __future__ import annotations

import threading
import typing as t
from collections import Counter
from datetime import datetime
from datetime import timezone

import pytest
from flask import Flask

from flask_serversession.backends.base import Backend
from flask_serversession.backends.memory import MemoryBackend
from flask_serversession.backends.moving import MovingBackend

from .conftest import session_cookie
from .conftest import store_of

#: (old store, new store).
PAIRS = [("sqlite", "redis"), ("redis", "postgres")]
WAIT = 30


def now() -> datetime:
    return datetime.now(timezone.utc)


class Hold:
    """Holds the thread named ``who`` at its first call of ``method`` on ``backend``.

    Before the call, or with ``after`` once it returned; :attr:`reached` is
    set when the thread is held, and it goes on when :attr:`release` is.
    """

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        backend: Backend,
        method: str,
        who: str,
        *,
        after: bool = False,
    ) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()
        original = getattr(backend, method)

        def held(*args: t.Any) -> t.Any:
            if threading.current_thread().name != who or self.reached.is_set():
                return original(*args)
            result = original(*args) if after else None
            self.reached.set()
            assert self.release.wait(WAIT), f"{who} was never released from {method}"
            return result if after else original(*args)

        monkeypatch.setattr(backend, method, held)


def run(name: str, target: t.Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Start ``target`` in a thread named ``name``; the list receives what it returned."""
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(target()), name=name, daemon=True)
    thread.start()
    return thread, out


def moving_app(
    request: pytest.FixtureRequest, make_app: t.Callable[..., Flask], pair: tuple[str, str]
) -> tuple[Flask, str, str, MovingBackend]:
    """An app moving from the old store of ``pair`` to the new one, and a session in
    the old store: its token and storage key."""
    old: Backend = request.getfixturevalue(f"{pair[0]}_backend")
    new: Backend = request.getfixturevalue(f"{pair[1]}_backend")
    client = make_app(old).test_client()
    client.post("/set", json={"user": "alice"})
    token = session_cookie(client)
    assert token is not None
    app = make_app(new, SERVERSESSION_MIGRATE_FROM=old)
    store = store_of(app)
    sid = store.sid_from(token)
    assert sid is not None
    return app, token, store.storage_key(sid), t.cast(MovingBackend, store.backend)


class Counted(MemoryBackend):
    """A memory store that counts every call of the Backend interface made to it."""

    def __init__(self, calls: Counter[str], name: str) -> None:
        super().__init__()
        for method in ("load", "create", "add", "update", "touch", "take", "delete"):
            original = getattr(self, method)

            def counted(*args: t.Any, _m: str = method, _f: t.Any = original) -> t.Any:
                calls[f"{name}.{_m}"] += 1
                return _f(*args)

            setattr(self, method, counted)


def test_an_ended_sessions_token_costs_three_reads_and_no_wait(
    make_app: t.Callable[..., Flask],
) -> None:
    calls: Counter[str] = Counter()
    old, new = Counted(calls, "old"), Counted(calls, "new")
    app = make_app(new, SERVERSESSION_MIGRATE_FROM=old)
    client = app.test_client()
    client.post("/set", json={"user": "alice"})
    token = session_cookie(client)
    assert token is not None
    client.post("/destroy")

    calls.clear()
    replay = app.test_client()
    replay.set_cookie("session", token)
    assert replay.get("/dump").get_json() == {}
    # The current store, the old one, the current one again: nothing waits
    # or polls for a move that is not coming.
    assert calls == Counter({"new.load": 2, "old.load": 1})


@pytest.mark.parametrize("pair", PAIRS, ids="->".join)
@pytest.mark.parametrize("first", ["mover", "request"])
def test_a_lookup_finds_a_session_another_process_is_moving(
    request: pytest.FixtureRequest,
    make_app: t.Callable[..., Flask],
    monkeypatch: pytest.MonkeyPatch,
    pair: tuple[str, str],
    first: str,
) -> None:
    app, token, key, moving = moving_app(request, make_app, pair)
    # The request has missed the current store and not yet read the old one;
    # the mover has added the session to the current store, not yet taken it.
    between_reads = Hold(monkeypatch, moving.old, "load", "request")
    between_add_and_take = Hold(monkeypatch, moving.old, "take", "mover")
    looking, found = run("request", lambda: store_of(app).get(token))
    assert between_reads.reached.wait(WAIT)
    mover, moved = run("mover", lambda: moving.move(key, now()))
    assert between_add_and_take.reached.wait(WAIT)

    # "mover": the session is gone from the old store when the request reads
    # it, so it is found by the second read of the current one. "request":
    # the request finds it in the old store, loses the add, reads the current one.
    holds = [between_add_and_take, between_reads]
    threads = [mover, looking]
    if first == "request":
        holds.reverse()
        threads.reverse()
    for hold, thread in zip(holds, threads, strict=True):
        hold.release.set()
        thread.join(WAIT)
        assert not thread.is_alive()
    assert found == [{"user": "alice"}]
    assert moved == [True]
    assert moving.current.load(key) is not None
    assert moving.old.load(key) is None


@pytest.mark.parametrize("pair", PAIRS, ids="->".join)
@pytest.mark.parametrize(
    ("method", "after"), [("load", True), ("add", True), ("take", False)], ids=str
)
def test_a_sign_out_during_a_move_stays_a_sign_out(
    request: pytest.FixtureRequest,
    make_app: t.Callable[..., Flask],
    monkeypatch: pytest.MonkeyPatch,
    pair: tuple[str, str],
    method: str,
    after: bool,
) -> None:
    app, token, key, moving = moving_app(request, make_app, pair)
    # Held after reading the old store, after adding to the current one, or
    # before taking from the old one.
    store = moving.current if method == "add" else moving.old
    hold = Hold(monkeypatch, store, method, "mover", after=after)
    mover, moved = run("mover", lambda: moving.move(key, now()))
    assert hold.reached.wait(WAIT)

    client = app.test_client()
    client.set_cookie("session", token)
    assert client.get("/dump").get_json() == {"user": "alice"}, "signed in until now"
    assert client.post("/destroy").status_code == 200

    hold.release.set()
    mover.join(WAIT)
    assert not mover.is_alive()
    assert moved == [False]
    assert moving.current.load(key) is None
    assert moving.old.load(key) is None
    replay = app.test_client()
    replay.set_cookie("session", token)
    assert replay.get("/dump").get_json() == {}, "the token opens nothing"
