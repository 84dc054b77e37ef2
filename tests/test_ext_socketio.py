"""Flask-SocketIO event handlers on a server-side session (docs: extensions.rst)."""

from __future__ import annotations

import threading
import typing as t
from datetime import timedelta

import pytest
from flask import Flask
from flask import session
from flask.testing import FlaskClient
from flask_socketio import SocketIO
from flask_socketio.test_client import SocketIOTestClient

from flask_serversession import signals
from flask_serversession.backends.base import Backend

from .conftest import Clock
from .conftest import session_cookie
from .conftest import store_of

WAIT = 10.0


def add_socketio(app: Flask, *, manage_session: bool = False) -> SocketIO:
    """The handlers of the docs page, plus ones that show and end the session."""
    # docs/extensions.rst, "Flask-SocketIO"
    socketio = SocketIO(app, manage_session=manage_session)

    @socketio.on("connect")
    def connect() -> None:
        if "user" not in session:
            raise ConnectionRefusedError("Sign in first.")

    @socketio.on("add_to_cart")
    def add_to_cart(item: str) -> list[str]:
        session.setdefault("cart", []).append(item)
        return t.cast(list[str], session["cart"])

    @socketio.on("dump")
    def dump() -> dict[str, t.Any]:
        return dict(session)

    @socketio.on("set")
    def set_value(key: str, value: t.Any) -> None:
        session[key] = value

    @socketio.on("destroy")
    def destroy() -> None:
        session.destroy()

    @socketio.on("regenerate")
    def regenerate() -> None:
        session.regenerate()

    return socketio


def signed_in(app: Flask, user: str = "alice") -> FlaskClient:
    client = app.test_client()
    client.post("/set", json={"user": user})
    return client


def connect(socketio: SocketIO, app: Flask, client: FlaskClient) -> SocketIOTestClient:
    socket = socketio.test_client(app, flask_test_client=client)
    assert socket.is_connected()
    return socket


def storage_keys(app: Flask) -> set[str]:
    return {key for key, _ in store_of(app).items()}


def test_handlers_share_the_http_session(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = make_app(backend)
    socketio = add_socketio(app)
    client = signed_in(app)
    socket = connect(socketio, app, client)

    assert socket.emit("dump", callback=True) == {"user": "alice"}
    assert socket.emit("add_to_cart", "apple", callback=True) == ["apple"]
    # The list exists now, so this change is made inside it, not by assignment.
    assert socket.emit("add_to_cart", "pear", callback=True) == ["apple", "pear"]
    socket.emit("set", "theme", "dark", callback=True)

    assert client.get("/dump").json == {"user": "alice", "cart": ["apple", "pear"], "theme": "dark"}
    client.post("/append/cart", json="plum")
    assert socket.emit("dump", callback=True)["cart"] == ["apple", "pear", "plum"]
    assert len(storage_keys(app)) == 1
    socket.disconnect()


def test_connect_handler_sees_the_http_session(make_app: t.Callable[..., Flask]) -> None:
    app = make_app()
    socketio = add_socketio(app)
    client = app.test_client()
    assert not socketio.test_client(app, flask_test_client=client).is_connected()

    client.post("/set", json={"user": "alice"})
    assert socketio.test_client(app, flask_test_client=client).is_connected()


def test_session_destroyed_over_http_stays_destroyed(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = make_app(backend)
    socketio = add_socketio(app)
    client = signed_in(app)
    socket = connect(socketio, app, client)
    (signed_in_key,) = storage_keys(app)

    client.post("/destroy")
    socket.emit("add_to_cart", "apple", callback=True)
    socket.emit("set", "user", "mallory", callback=True)

    assert signed_in_key not in storage_keys(app)
    assert socket.emit("dump", callback=True) == {}
    assert client.get("/dump").json == {}
    assert session_cookie(client) is None


def test_socket_keeps_the_session_id_it_connected_with(make_app: t.Callable[..., Flask]) -> None:
    app = make_app()
    socketio = add_socketio(app)
    client = signed_in(app)
    socket = connect(socketio, app, client)

    client.post("/regenerate")
    assert socket.emit("dump", callback=True) == {}
    socket.disconnect()

    socket = connect(socketio, app, client)
    assert socket.emit("dump", callback=True) == {"user": "alice"}


def test_destroy_in_a_handler_deletes_the_record(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = make_app(backend)
    socketio = add_socketio(app)
    client = signed_in(app)
    socket = connect(socketio, app, client)

    socket.emit("destroy", callback=True)

    assert storage_keys(app) == set()
    assert socket.emit("dump", callback=True) == {}
    # No cookie can travel over the socket: the browser keeps the dead one
    # until its next HTTP request, which starts afresh and expires it.
    assert session_cookie(client) is not None
    response = client.get("/dump")
    assert response.json == {}
    assert "session=;" in response.headers["Set-Cookie"]
    assert session_cookie(client) is None


def test_regenerate_in_a_handler_is_refused(make_app: t.Callable[..., Flask]) -> None:
    app = make_app()
    socketio = add_socketio(app)
    client = signed_in(app)
    socket = connect(socketio, app, client)
    (old_key,) = storage_keys(app)

    with pytest.raises(RuntimeError, match=r"Socket\.IO event handler"):
        socket.emit("regenerate", callback=True)

    # Nothing moved: the client keeps its session.
    assert storage_keys(app) == {old_key}
    assert client.get("/dump").json == {"user": "alice"}
    assert socket.emit("dump", callback=True) == {"user": "alice"}


def test_writes_after_destroy_in_a_handler_store_nothing(
    make_app: t.Callable[..., Flask], backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(backend)
    socketio = add_socketio(app)
    client = signed_in(app)
    socket = connect(socketio, app, client)

    socket.emit("destroy", callback=True)
    for i in range(3):
        socket.emit("set", "late", i, callback=True)

    # No client could ever reach a session created here.
    assert storage_keys(app) == set()
    assert "Socket.IO event handler wrote to a session" in caplog.text


def test_managed_session_is_a_socket_local_copy(make_app: t.Callable[..., Flask]) -> None:
    app = make_app()
    socketio = add_socketio(app, manage_session=True)
    client = signed_in(app)
    socket = connect(socketio, app, client)

    assert socket.emit("add_to_cart", "apple", callback=True) == ["apple"]
    client.post("/set", json={"theme": "dark"})

    assert socket.emit("dump", callback=True) == {"user": "alice", "cart": ["apple"]}
    assert client.get("/dump").json == {"user": "alice", "theme": "dark"}
    socket.disconnect()

    # A new connection starts from a new copy; the old one's writes are gone.
    socket = connect(socketio, app, client)
    assert socket.emit("dump", callback=True) == {"user": "alice", "theme": "dark"}


def test_managed_session_copy_is_taken_at_the_first_event(
    make_app: t.Callable[..., Flask],
) -> None:
    app = make_app()
    socketio = SocketIO(app)

    @socketio.on("dump")
    def dump() -> dict[str, t.Any]:
        return dict(session)

    client = signed_in(app)
    socket = connect(socketio, app, client)
    client.post("/set", json={"theme": "dark"})

    assert socket.emit("dump", callback=True) == {"user": "alice", "theme": "dark"}
    client.post("/set", json={"theme": "light"})
    assert socket.emit("dump", callback=True) == {"user": "alice", "theme": "dark"}


def test_header_mode_token_in_the_handshake_headers(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(SERVERSESSION_HEADER_NAME="X-Session-Token")
    socketio = add_socketio(app)
    api = app.test_client(use_cookies=False)
    token = api.post("/set", json={"user": "alice"}).headers["X-Session-Token"]

    # docs/extensions.rst, "Header mode"
    socket = socketio.test_client(app, headers={"X-Session-Token": token})

    assert socket.is_connected()
    assert socket.emit("add_to_cart", "apple", callback=True) == ["apple"]
    response = api.get("/dump", headers={"X-Session-Token": token})
    assert response.json == {"user": "alice", "cart": ["apple"]}
    assert not socketio.test_client(app).is_connected()


def rotating_app(make_app: t.Callable[..., Flask], backend: Backend | str = "memory") -> Flask:
    app = make_app(backend, SERVERSESSION_ROTATE_EVERY=timedelta(minutes=15))
    store_of(app).clock = Clock()
    return app


def test_a_handler_never_rotates(make_app: t.Callable[..., Flask], backend: Backend) -> None:
    app = rotating_app(make_app, backend)
    socketio = add_socketio(app)
    client = signed_in(app)
    socket = connect(socketio, app, client)
    (key,) = storage_keys(app)

    t.cast(Clock, store_of(app).clock).advance(minutes=16)
    assert socket.emit("add_to_cart", "apple", callback=True) == ["apple"]
    assert socket.emit("dump", callback=True) == {"user": "alice", "cart": ["apple"]}
    assert storage_keys(app) == {key}
    # The next HTTP response, which can carry the new token, rotates.
    before = session_cookie(client)
    assert client.get("/dump").json == {"user": "alice", "cart": ["apple"]}
    assert session_cookie(client) != before
    # A new token; the session itself stays where it was (0.3).
    assert storage_keys(app) == {key}


def test_a_handler_with_a_rotated_out_token_within_the_grace_works(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = rotating_app(make_app, backend)
    socketio = add_socketio(app)
    client = signed_in(app)
    socket = connect(socketio, app, client)

    clock = t.cast(Clock, store_of(app).clock)
    clock.advance(minutes=16)
    client.get("/dump")
    client.post("/append/cart", json="pear")
    clock.advance(seconds=30)

    # The socket still holds the token it connected with.
    assert socket.emit("dump", callback=True) == {"user": "alice", "cart": ["pear"]}
    assert socket.emit("add_to_cart", "apple", callback=True) == ["pear", "apple"]
    assert client.get("/dump").json == {"user": "alice", "cart": ["pear", "apple"]}
    assert len(storage_keys(app)) == 1
    socket.disconnect()


def test_a_connection_outlives_the_grace_and_two_rotations(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = rotating_app(make_app, backend)
    reused = []

    def on_reused(sender: Flask, **kwargs: str) -> None:
        reused.append(kwargs)

    signals.session_token_reused.connect(on_reused)
    try:
        socketio = add_socketio(app)
        client = signed_in(app)
        socket = connect(socketio, app, client)
        clock = t.cast(Clock, store_of(app).clock)
        for _ in range(2):
            clock.advance(minutes=16)
            client.get("/dump")
            client.post("/append/cart", json="pear")
            clock.advance(minutes=5)
            # The socket cannot receive the new token: its old one is no copy.
            assert socket.emit("add_to_cart", "apple", callback=True)[-1] == "apple"
        assert client.get("/dump").json == {"user": "alice", "cart": ["pear", "apple"] * 2}
        assert len(storage_keys(app)) == 1
        assert reused == []

        # A connection opened with a copy of the rotated-out cookie is a reuse.
        thief = app.test_client()
        thief.set_cookie("session", t.cast(str, session_cookie(client)))
        client.get("/dump")
        clock.advance(minutes=16)
        client.get("/dump")
        client.get("/dump")
        clock.advance(minutes=5)
        assert not socketio.test_client(app, flask_test_client=thief).is_connected()
        assert len(reused) == 1
        assert storage_keys(app) == set()
    finally:
        signals.session_token_reused.disconnect(on_reused)


def test_a_handler_write_meeting_a_rotation_lands_in_the_new_session(
    make_app: t.Callable[..., Flask], backend: Backend
) -> None:
    app = rotating_app(make_app, backend)
    socketio = add_socketio(app)
    inside, release = threading.Event(), threading.Event()

    @socketio.on("parked_add")
    def parked_add(item: str) -> None:
        session.get("user")
        inside.set()
        assert release.wait(WAIT)
        session.setdefault("cart", []).append(item)

    client = signed_in(app)
    socket = connect(socketio, app, client)
    t.cast(Clock, store_of(app).clock).advance(minutes=16)
    event = threading.Thread(target=socket.emit, args=("parked_add", "apple"), daemon=True)
    event.start()
    try:
        assert inside.wait(WAIT)
        # An HTTP request rotates the session while the handler is parked.
        before = session_cookie(client)
        assert client.get("/dump").json == {"user": "alice"}
        assert session_cookie(client) != before
    finally:
        release.set()
        event.join(WAIT)
    assert not event.is_alive()
    assert client.get("/dump").json == {"user": "alice", "cart": ["apple"]}
    assert socket.emit("dump", callback=True) == {"user": "alice", "cart": ["apple"]}
    assert len(storage_keys(app)) == 1
