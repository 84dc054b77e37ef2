"""A user's sessions: listing, revoking, last seen, the client, the per-user limit
(docs: users.rst), through the app on every backend that keeps a user index."""

from __future__ import annotations

import random
import re
import string
import typing as t
from datetime import timedelta

import pytest
from flask import abort
from flask import Flask
from flask import redirect
from flask import request
from flask import session
from flask import url_for
from flask.testing import FlaskClient
from flask_login import current_user
from flask_login import login_required
from werkzeug.middleware.proxy_fix import ProxyFix

from flask_serversession import ConfigError
from flask_serversession import ServerSession
from flask_serversession import SessionInfo
from flask_serversession.backends.base import Backend
from flask_serversession.backends.memory import MemoryBackend
from flask_serversession.signals import session_revoked
from flask_serversession.users import SEEN_KEY

from .conftest import Clock
from .conftest import CountingBackend
from .conftest import session_cookie
from .conftest import store_of
from .support.users import add_sign_in
from .support.users import needs_user_index
from .support.users import PASSWORDS
from .support.users import sign_in
from .test_races import park
from .test_races import Parked

# Flask-Login dates its remember cookie with datetime.utcnow(), which newer
# Pythons deprecate; the warning is Flask-Login's, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:datetime.datetime.utcnow:DeprecationWarning")

LAPTOP = ("Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0", "127.0.0.2")
PHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5) Safari/604.1", "127.0.0.3")
TABLET = ("Mozilla/5.0 (Linux; Android 14) Chrome/126.0", "127.0.0.4")

server_session = ServerSession()


def add_account_views(app: Flask) -> None:
    """Flask-Login and the account views of the docs page."""
    add_sign_in(app)

    # docs/users.rst, "Listing a user's sessions"
    @app.get("/account/sessions")
    @login_required
    def account_sessions() -> t.Any:
        return [
            {
                "key": info.storage_key,
                "signed_in": info.created_at.isoformat(),
                "last_seen": info.last_seen.isoformat(),
                "device": info.user_agent,
                "this_device": info.current,
            }
            for info in server_session.user_sessions(current_user.get_id())
        ]

    # docs/users.rst, "Ending a session"
    @app.post("/account/sessions/<key>/end")
    @login_required
    def end_session(key: str) -> t.Any:
        mine = server_session.user_sessions(current_user.get_id())
        if key not in {info.storage_key for info in mine}:
            abort(404)
        server_session.revoke(key)
        return redirect(url_for("account_sessions"))

    # docs/users.rst, "Signing out everywhere else"
    @app.post("/account/password")
    @login_required
    def change_password() -> str:
        set_password(current_user, request.form["password"])
        ended = server_session.revoke_user(current_user.get_id(), keep_current=True)
        session.regenerate()
        return f"Password changed. Signed out of {ended} other sessions."


def set_password(user: t.Any, password: str) -> None:
    PASSWORDS[user.id] = password


@pytest.fixture(autouse=True)
def _passwords() -> t.Iterator[None]:
    saved = dict(PASSWORDS)
    yield
    PASSWORDS.clear()
    PASSWORDS.update(saved)


def users_app_for(make_app: t.Callable[..., Flask], backend: Backend, **config: t.Any) -> Flask:
    needs_user_index(backend)
    config = {"SERVERSESSION_USER_KEY": "_user_id", "SERVERSESSION_TRACK_CLIENT": True, **config}
    app = make_app(backend, **config)
    add_account_views(app)
    store_of(app).clock = Clock()
    return app


@pytest.fixture
def users_app(make_app: t.Callable[..., Flask], backend: Backend) -> Flask:
    return users_app_for(make_app, backend)


def clock_of(app: Flask) -> Clock:
    return t.cast(Clock, store_of(app).clock)


def device(app: Flask, client: tuple[str, str] = LAPTOP) -> FlaskClient:
    user_agent, remote_addr = client
    test_client = app.test_client()
    test_client.environ_base.update(HTTP_USER_AGENT=user_agent, REMOTE_ADDR=remote_addr)
    return test_client


def signed_in(app: Flask, user: str = "alice", client: tuple[str, str] = LAPTOP) -> FlaskClient:
    test_client = device(app, client)
    sign_in(test_client, user)
    return test_client


def key_of(app: Flask, client: FlaskClient) -> str:
    store = store_of(app)
    sid = store.sid_from(session_cookie(client))
    assert sid is not None
    return store.storage_key(sid)


def sessions_of(app: Flask, user: t.Any) -> list[SessionInfo]:
    with app.app_context():
        return server_session.user_sessions(user)


def listed_keys(app: Flask, user: t.Any) -> list[str]:
    return [info.storage_key for info in sessions_of(app, user)]


def test_sign_in_lists_the_session(users_app: Flask) -> None:
    clock = clock_of(users_app)
    anonymous = device(users_app, PHONE)
    anonymous.post("/set", json={"cart": ["apple"]})
    laptop = signed_in(users_app)
    signed_in_at = clock.now
    clock.advance(minutes=1)

    (info,) = sessions_of(users_app, "alice")
    assert info == SessionInfo(
        storage_key=key_of(users_app, laptop),
        user_id="alice",
        created_at=signed_in_at,
        expires_at=signed_in_at + timedelta(hours=24),
        last_seen=signed_in_at,
        user_agent=LAPTOP[0],
        remote_addr=LAPTOP[1],
        current=False,
    )
    (entry,) = laptop.get("/account/sessions").json
    assert entry["this_device"] is True and entry["key"] == info.storage_key
    assert sessions_of(users_app, "bob") == []

    clock.advance(hours=25)
    assert sessions_of(users_app, "alice") == []


def test_account_page_lists_sessions(users_app: Flask) -> None:
    clock = clock_of(users_app)
    laptop = signed_in(users_app, client=LAPTOP)
    clock.advance(minutes=1)
    phone = signed_in(users_app, client=PHONE)
    signed_in(users_app, "bob", client=TABLET)

    page = laptop.get("/account/sessions").json
    assert [entry["key"] for entry in page] == [key_of(users_app, phone), key_of(users_app, laptop)]
    assert [entry["device"] for entry in page] == [PHONE[0], LAPTOP[0]]
    assert [entry["this_device"] for entry in page] == [False, True]
    assert [entry["this_device"] for entry in phone.get("/account/sessions").json] == [True, False]


def test_user_ids_are_compared_as_text(users_app: Flask) -> None:
    with users_app.app_context():
        server_session.create({"_user_id": 123})
        server_session.create({"_user_id": "123"})
        server_session.create({"_user_id": 1234})
    assert len(sessions_of(users_app, 123)) == 2
    assert [info.user_id for info in sessions_of(users_app, "123")] == ["123", "123"]


# Random, so a database cannot compress it below its index's limit.
_RANDOM = random.Random(7)
ODD_USER_IDS = {
    "nul": "sso|a\x00b",
    "long": "".join(_RANDOM.choices(string.ascii_letters + string.digits, k=10_000)),
    "long unicode": "ü🙂中" * 1_000,
    "digest-like": "sha256:" + "0" * 64,
}


@pytest.mark.parametrize("user", list(ODD_USER_IDS.values()), ids=list(ODD_USER_IDS))
def test_any_user_id_signs_in_lists_and_revokes(users_app: Flask, user: str) -> None:
    PASSWORDS[user] = "secret"
    laptop = signed_in(users_app, user)
    phone = signed_in(users_app, user, PHONE)
    signed_in(users_app, "alice", TABLET)
    assert laptop.get("/whoami").text == user

    listed = sorted(info.storage_key for info in sessions_of(users_app, user))
    assert listed == sorted([key_of(users_app, laptop), key_of(users_app, phone)])
    assert {info.user_id for info in sessions_of(users_app, user)} == {user}
    # Ids that differ only past what an index keeps, or by the NUL, are others.
    assert sessions_of(users_app, user + "y") == []
    if "\x00" in user:
        assert sessions_of(users_app, user.replace("\x00", "")) == []

    with users_app.app_context():
        assert server_session.revoke_user(user, keep_current=False) == 2
    assert laptop.get("/whoami").text == "anonymous"
    assert len(sessions_of(users_app, "alice")) == 1


def test_a_long_id_and_its_digest_are_two_users(users_app: Flask) -> None:
    import hashlib

    long_id = "z" * 500
    digest = "sha256:" + hashlib.sha256(long_id.encode()).hexdigest()
    with users_app.app_context():
        server_session.create({"_user_id": long_id})
        server_session.create({"_user_id": digest})
    assert [info.user_id for info in sessions_of(users_app, long_id)] == [long_id]
    assert [info.user_id for info in sessions_of(users_app, digest)] == [digest]


@pytest.mark.parametrize("empty", ["", ()])
def test_an_empty_user_id_is_refused_by_name(users_app: Flask, empty: t.Any) -> None:
    with users_app.app_context():
        if empty == "":
            with pytest.raises(ValueError, match="empty"):
                server_session.user_sessions(empty)
            with pytest.raises(ValueError, match="empty"):
                server_session.revoke_user(empty)
        else:
            with pytest.raises(TypeError, match="not tuple"):
                server_session.user_sessions(empty)


def test_sign_out_and_change_of_user_move_the_session(users_app: Flask) -> None:
    client = device(users_app)
    client.post("/set", json={"_user_id": "alice", "cart": ["apple"]})
    key = key_of(users_app, client)
    assert listed_keys(users_app, "alice") == [key]

    client.post("/set", json={"_user_id": "bob"})
    assert (listed_keys(users_app, "alice"), listed_keys(users_app, "bob")) == ([], [key])

    client.post("/delete/_user_id")
    assert (listed_keys(users_app, "alice"), listed_keys(users_app, "bob")) == ([], [])
    assert client.get("/dump").json == {"cart": ["apple"]}


def test_regenerate_and_destroy_keep_the_index_true(users_app: Flask) -> None:
    client = device(users_app)
    client.post("/set", json={"cart": ["apple"]})
    anonymous_key = key_of(users_app, client)
    client.post("/login", data={"username": "alice", "password": PASSWORDS["alice"]})
    signed_in_key = key_of(users_app, client)
    assert signed_in_key != anonymous_key
    assert listed_keys(users_app, "alice") == [signed_in_key]

    client.post("/regenerate")
    assert listed_keys(users_app, "alice") == [key_of(users_app, client)] != [signed_in_key]

    client.post("/logout")
    assert listed_keys(users_app, "alice") == []


def test_sessions_stored_before_the_user_key_join_at_their_next_request(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    needs_user_index(backend)
    before = make_app(backend)
    client = before.test_client()
    client.post("/set", json={"_user_id": "alice"})
    token = t.cast(str, session_cookie(client))

    app = users_app_for(make_app, backend)
    assert sessions_of(app, "alice") == []
    later = app.test_client()
    later.set_cookie("session", token)
    assert later.get("/whoami").text == "alice"
    assert listed_keys(app, "alice") == [key_of(app, later)]


def test_session_data_holds_no_metadata(users_app: Flask) -> None:
    laptop = signed_in(users_app)
    laptop.post("/set", json={"cart": ["apple"]})
    data = laptop.get("/dump").json
    assert data.keys() == {"_user_id", "_fresh", "_id", "cart"}
    with users_app.app_context():
        ((_key, stored),) = server_session.items()
    assert stored == data


@pytest.mark.parametrize("key", ["_serversession_seen", "_serversession_client", "_serversession_"])
def test_reserved_keys_are_refused(make_app: t.Callable[..., Flask], key: str) -> None:
    app = make_app(SERVERSESSION_USER_KEY="_user_id")
    with pytest.raises(TypeError, match=f"Session key '{key}' is reserved"):
        app.test_client().post("/set", json={key: 1})
    with app.app_context(), pytest.raises(TypeError, match="reserved"):
        server_session.create({key: 1})


def test_user_value_of_another_type_is_refused(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(SERVERSESSION_USER_KEY="_user_id")
    client = app.test_client()
    with pytest.raises(TypeError, match=r"'_user_id' names the signed-in user .* holds a float"):
        client.post("/set", json={"_user_id": 1.5})
    assert client.get_cookie("session") is None
    client.post("/set", json={"_user_id": None, "cart": []})
    assert client.get("/dump").json == {"_user_id": None, "cart": []}


def test_ending_one_session_signs_that_device_out(users_app: Flask) -> None:
    laptop = signed_in(users_app, client=LAPTOP)
    phone = signed_in(users_app, client=PHONE)
    phone_key = key_of(users_app, phone)

    response = laptop.post(f"/account/sessions/{phone_key}/end")
    assert response.status_code == 302
    assert phone.get("/whoami").text == "anonymous"
    assert laptop.get("/whoami").text == "alice"
    assert listed_keys(users_app, "alice") == [key_of(users_app, laptop)]


def test_cannot_end_another_users_session(users_app: Flask) -> None:
    alice = signed_in(users_app, client=LAPTOP)
    bob = signed_in(users_app, "bob", client=PHONE)
    assert bob.post(f"/account/sessions/{key_of(users_app, alice)}/end").status_code == 404
    assert alice.get("/whoami").text == "alice"


def test_revoked_session_is_fresh_and_empty(users_app: Flask) -> None:
    laptop = signed_in(users_app)
    laptop.post("/set", json={"cart": ["apple"]})
    old_token = session_cookie(laptop)
    key = key_of(users_app, laptop)
    with users_app.app_context():
        assert server_session.revoke(key) is True
        assert server_session.revoke(key) is False
        assert server_session.revoke("not a storage key") is False

    assert laptop.get("/dump").json == {}
    laptop.post("/set", json={"theme": "dark"})
    assert session_cookie(laptop) != old_token
    assert key_of(users_app, laptop) != key
    assert store_of(users_app).backend.load(key) is None


@pytest.mark.parametrize("request_kind", ["write", "read", "regenerate"])
def test_request_in_flight_does_not_bring_back_a_revoked_session(
    users_app: Flask, request_kind: str
) -> None:
    path = f"/parked/{request_kind}"

    @users_app.post(path)
    def parked() -> str:
        session.get("_user_id")
        if request_kind == "regenerate":
            session.regenerate()
        park(path)
        if request_kind != "read":
            session["late"] = "write"
        return "done"

    laptop = signed_in(users_app)
    token = t.cast(str, session_cookie(laptop))
    key = key_of(users_app, laptop)
    with Parked(users_app, token, path) as in_flight:
        # A read records its last-seen time when it ends: make it due.
        clock_of(users_app).advance(minutes=10)
        with users_app.app_context():
            assert server_session.revoke(key) is True
    assert in_flight.error is None and in_flight.response.status_code == 200

    assert listed_keys(users_app, "alice") == []
    assert store_of(users_app).backend.load(key) is None
    with users_app.app_context():
        assert list(server_session.items()) == []
    assert laptop.get("/whoami").text == "anonymous"


def test_password_change_ends_every_other_session(users_app: Flask) -> None:
    laptop = signed_in(users_app, client=LAPTOP)
    phone = signed_in(users_app, client=PHONE)
    tablet = signed_in(users_app, client=TABLET)
    bob = signed_in(users_app, "bob", client=TABLET)
    before = session_cookie(laptop)

    response = laptop.post("/account/password", data={"password": "looking glass"})
    assert response.text == "Password changed. Signed out of 2 other sessions."
    assert session_cookie(laptop) != before
    assert laptop.get("/whoami").text == "alice"
    assert phone.get("/whoami").text == "anonymous"
    assert tablet.get("/whoami").text == "anonymous"
    assert bob.get("/whoami").text == "bob"
    assert listed_keys(users_app, "alice") == [key_of(users_app, laptop)]


def test_revoke_user_keeps_the_current_session_only_when_asked(users_app: Flask) -> None:
    laptop = signed_in(users_app, client=LAPTOP)
    signed_in(users_app, client=PHONE)
    cookie = f"session={session_cookie(laptop)}"
    with users_app.test_request_context(headers={"Cookie": cookie}):
        assert server_session.revoke_user("alice") == 1
        assert server_session.revoke_user("alice", keep_current=True) == 0
        (info,) = server_session.user_sessions("alice")
        assert info.current is True
        assert server_session.revoke_user("alice", keep_current=False) == 1
    with users_app.app_context():
        assert server_session.revoke_user("alice") == 0
    assert laptop.get("/whoami").text == "anonymous"


def test_remember_cookie_signs_a_revoked_device_back_in(users_app: Flask) -> None:
    phone = device(users_app, PHONE)
    form = {"username": "alice", "password": PASSWORDS["alice"], "remember": "yes"}
    assert phone.post("/login", data=form).status_code == 200
    revoked = key_of(users_app, phone)
    with users_app.app_context():
        assert server_session.revoke_user("alice") == 1

    assert phone.get("/whoami").text == "alice"
    assert listed_keys(users_app, "alice") == [key_of(users_app, phone)] != [revoked]


def test_last_seen_is_written_at_most_once_per_span(make_app: t.Callable[..., Flask]) -> None:
    backend = CountingBackend()
    app = users_app_for(make_app, backend, SERVERSESSION_LAST_SEEN_EVERY=300)
    clock = clock_of(app)
    laptop = signed_in(app)
    signed_in_at = clock.now

    def writes_after(*paths: str) -> int:
        backend.calls.clear()
        for path in paths:
            assert laptop.get(path).status_code == 200
        return backend.calls["update"] + backend.calls["touch"]

    assert writes_after(*["/whoami"] * 5) == 0
    clock.advance(minutes=4, seconds=59)
    assert writes_after("/whoami", "/get/cart") == 0
    (info,) = sessions_of(app, "alice")
    assert info.last_seen == signed_in_at

    clock.advance(seconds=1)
    assert writes_after(*["/whoami"] * 5) == 1
    assert backend.deltas[-1].set.keys() == {SEEN_KEY}
    (info,) = sessions_of(app, "alice")
    assert info.last_seen == clock.now

    # A request that writes anyway records it in the same write.
    clock.advance(seconds=30)
    backend.calls.clear()
    laptop.post("/set", json={"cart": ["apple"]})
    assert backend.calls["update"] + backend.calls["touch"] == 1
    assert backend.deltas[-1].set.keys() == {"cart", SEEN_KEY}
    assert sessions_of(app, "alice")[0].last_seen == clock.now


def test_without_user_key_reads_never_write(make_app: t.Callable[..., Flask]) -> None:
    backend = CountingBackend()
    app = make_app(backend)
    clock = store_of(app).clock = Clock()
    client = app.test_client()
    client.post("/set", json={"_user_id": "alice"})
    backend.calls.clear()
    for _ in range(3):
        clock.advance(hours=1)
        client.get("/get/_user_id")
    assert backend.calls["update"] + backend.calls["touch"] == 0


def test_track_client_records_user_agent_and_address(users_app: Flask) -> None:
    laptop = signed_in(users_app, client=LAPTOP)
    laptop.environ_base.update(HTTP_USER_AGENT="Another/1.0", REMOTE_ADDR="127.0.0.9")
    laptop.post("/set", json={"cart": ["apple"]})
    long_agent = "Agent/" + "x" * 2000 + "\x01"
    clock_of(users_app).advance(minutes=1)
    signed_in(users_app, client=(long_agent, "::1"))

    newest, first = sessions_of(users_app, "alice")
    assert (first.user_agent, first.remote_addr) == LAPTOP
    assert newest.user_agent == long_agent[:512] and newest.remote_addr == "::1"


def test_without_track_client_nothing_is_recorded(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = users_app_for(make_app, backend, SERVERSESSION_TRACK_CLIENT=False)
    signed_in(app)
    (info,) = sessions_of(app, "alice")
    assert (info.user_agent, info.remote_addr) == (None, None)


def test_track_client_behind_a_proxy(make_app: t.Callable[..., Flask]) -> None:
    app = users_app_for(make_app, MemoryBackend())
    # docs/users.rst, "Where and when"
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
    proxy = device(app, (LAPTOP[0], "127.0.0.1"))
    form = {"username": "alice", "password": PASSWORDS["alice"]}
    proxy.post("/login", data=form, headers={"X-Forwarded-For": "127.0.0.77"})
    (info,) = sessions_of(app, "alice")
    assert info.remote_addr == "127.0.0.77"


def test_max_sessions_per_user_revokes_the_least_recently_seen(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = users_app_for(make_app, backend, SERVERSESSION_MAX_SESSIONS_PER_USER=2)
    clock = clock_of(app)
    revoked: list[tuple[str, str | None]] = []

    def record(sender: Flask, storage_key: str, user_id: str | None) -> None:
        revoked.append((storage_key, user_id))

    session_revoked.connect(record, app)
    try:
        laptop = signed_in(app, client=LAPTOP)
        clock.advance(minutes=1)
        phone = signed_in(app, client=PHONE)
        clock.advance(minutes=5)
        assert laptop.get("/whoami").text == "alice"
        clock.advance(minutes=1)
        phone_key = key_of(app, phone)
        tablet = signed_in(app, client=TABLET)
        assert revoked == [(phone_key, "alice")]

        assert phone.get("/whoami").text == "anonymous"
        assert laptop.get("/whoami").text == tablet.get("/whoami").text == "alice"
        # Signing in again on a device replaces its session: nothing to revoke.
        laptop.post("/login", data={"username": "alice", "password": PASSWORDS["alice"]})
        assert len(revoked) == 1
        assert set(listed_keys(app, "alice")) == {key_of(app, laptop), key_of(app, tablet)}
    finally:
        session_revoked.disconnect(record, app)


def test_revoked_signal_carries_storage_key_and_user(users_app: Flask) -> None:
    app = users_app
    logged: list[str] = []
    received: list[dict[str, t.Any]] = []

    # docs/users.rst, "Signals"
    @session_revoked.connect_via(app)
    def log_revoked(app: Flask, storage_key: str, user_id: str | None) -> None:
        logged.append(f"Session {storage_key[:12]} of user {user_id} revoked")
        received.append({"storage_key": storage_key, "user_id": user_id})

    try:
        laptop = signed_in(app, client=LAPTOP)
        phone = signed_in(app, client=PHONE)
        with app.app_context():
            server_session.revoke(key_of(app, laptop))
            server_session.revoke_user("alice")
    finally:
        session_revoked.disconnect(log_revoked, app)

    keys = [key_of(app, laptop), key_of(app, phone)]
    assert received == [{"storage_key": key, "user_id": "alice"} for key in keys]
    assert logged[0] == f"Session {keys[0][:12]} of user alice revoked"
    for client in (laptop, phone):
        token = t.cast(str, session_cookie(client))
        sid = t.cast(str, store_of(app).sid_from(token))
        assert all(token not in repr(r) and sid not in repr(r) for r in received)


def test_cli_lists_and_revokes(users_app: Flask) -> None:
    clock = clock_of(users_app)
    signed_in_at = clock.now
    laptop = signed_in(users_app, client=LAPTOP)
    clock.advance(minutes=1)
    phone = signed_in(users_app, client=PHONE)
    signed_in(users_app, "bob", client=TABLET)
    runner = users_app.test_cli_runner()

    result = runner.invoke(args=["serversession", "sessions", "alice"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    line = re.compile(r"([0-9a-f]{12})  created (\S+ \S+) UTC  last seen (\S+ \S+) UTC  (.+)")
    matches = [line.fullmatch(text) for text in lines]
    assert all(matches), lines
    assert [m[1] for m in matches if m] == [key_of(users_app, c)[:12] for c in (phone, laptop)]
    assert [m[4] for m in matches if m] == [PHONE[0], LAPTOP[0]]
    laptop_line = t.cast(re.Match[str], matches[1])
    assert laptop_line[2] == laptop_line[3] == signed_in_at.strftime("%Y-%m-%d %H:%M:%S")

    def revoke(*args: str) -> t.Any:
        return runner.invoke(args=["serversession", "revoke", *args])

    laptop_key = key_of(users_app, laptop)
    result = revoke("bob", "--key", laptop_key[:12])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: No live session of user 'bob' has a storage key starting with"
        f" {laptop_key[:12]!r}.\n"
    )
    assert revoke("alice", "--key", key_of(users_app, phone)[:12]).output == "Ended 1 session.\n"
    assert revoke("--key", laptop_key).output == "Ended 1 session.\n"
    result = revoke("--key", laptop_key)
    assert result.exit_code == 1
    assert result.output == f"Error: No live session has the storage key {laptop_key!r}.\n"
    result = revoke("alice", "--key", laptop_key[:12])
    assert result.exit_code == 1 and repr(laptop_key[:12]) in result.output
    assert revoke("bob").output == "Ended 1 session.\n"
    for user in ("bob", "nobody"):
        result = revoke(user)
        assert result.exit_code == 0
        assert result.output == f"User {user!r} has no live sessions.\n"
    for args in ((), ("--key", "3fa9c2e1b7d0")):
        result = revoke(*args)
        assert result.exit_code == 2 and "Error:" in result.output


def test_user_key_values_are_validated(make_app: t.Callable[..., Flask]) -> None:
    bad = [
        ({"SERVERSESSION_USER_KEY": ""}, "SERVERSESSION_USER_KEY", "''"),
        ({"SERVERSESSION_USER_KEY": 7}, "SERVERSESSION_USER_KEY", "7"),
        ({"SERVERSESSION_USER_KEY": "_serversession_user"}, "SERVERSESSION_USER_KEY", "_user'"),
        (
            {"SERVERSESSION_USER_KEY": "u", "SERVERSESSION_MAX_SESSIONS_PER_USER": 0},
            "SERVERSESSION_MAX_SESSIONS_PER_USER",
            "0",
        ),
        ({"SERVERSESSION_MAX_SESSIONS_PER_USER": 3}, "SERVERSESSION_MAX_SESSIONS_PER_USER", "3"),
        ({"SERVERSESSION_TRACK_CLIENT": "yes"}, "SERVERSESSION_TRACK_CLIENT", "'yes'"),
        ({"SERVERSESSION_TRACK_CLIENT": True}, "SERVERSESSION_TRACK_CLIENT", "True"),
        ({"SERVERSESSION_LAST_SEEN_EVERY": -1}, "SERVERSESSION_LAST_SEEN_EVERY", "-1"),
        ({"SERVERSESSION_LAST_SEEN_EVERY": "5m"}, "SERVERSESSION_LAST_SEEN_EVERY", "'5m'"),
    ]
    for config, key, shown in bad:
        with pytest.raises(ConfigError) as info:
            make_app(**config)
        assert f"{key} = " in str(info.value) and shown in str(info.value), config


def test_user_key_needs_a_backend_with_a_user_index(make_app: t.Callable[..., Flask]) -> None:
    class NoIndexBackend(MemoryBackend):
        user_records = Backend.user_records

    with pytest.raises(ConfigError, match=r"SERVERSESSION_USER_KEY = '_user_id'.*NoIndexBackend"):
        make_app(NoIndexBackend(), SERVERSESSION_USER_KEY="_user_id")
    make_app(NoIndexBackend())


def test_user_key_needs_an_sql_backend_built_with_its_index(
    make_app: t.Callable[..., Flask], tmp_path: t.Any
) -> None:
    from flask_serversession.backends.sqlalchemy import SQLAlchemyBackend

    built_without = SQLAlchemyBackend.from_url(f"sqlite:///{tmp_path / 'plain.sqlite'}")
    with pytest.raises(ConfigError, match="user_index=True"):
        make_app(built_without, SERVERSESSION_USER_KEY="_user_id")
    built_without.close()


def test_listing_needs_the_user_key(make_app: t.Callable[..., Flask]) -> None:
    app = make_app()
    client = app.test_client()
    client.post("/set", json={"_user_id": "alice"})
    key = key_of(app, client)
    received: list[t.Any] = []

    def record(sender: Flask, **kwargs: t.Any) -> None:
        received.append(kwargs)

    with app.app_context(), session_revoked.connected_to(record, app):
        with pytest.raises(ConfigError, match="SERVERSESSION_USER_KEY is not set"):
            server_session.user_sessions("alice")
        with pytest.raises(ConfigError, match="SERVERSESSION_USER_KEY is not set"):
            server_session.revoke_user("alice")
        assert server_session.revoke(key) is True
    assert received == [{"storage_key": key, "user_id": None}]
    result = app.test_cli_runner().invoke(args=["serversession", "sessions", "alice"])
    assert result.exit_code == 1 and "SERVERSESSION_USER_KEY is not set" in result.output
