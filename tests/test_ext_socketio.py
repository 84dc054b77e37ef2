"""Flask-SocketIO event handlers on a server-side session (docs: extensions.rst)."""

from __future__ import annotations

import typing as t

import pytest
from flask import Flask
from flask import session
from flask.testing import FlaskClient
from flask_socketio import SocketIO
from flask_socketio.test_client import SocketIOTestClient

from flask_serversession.backends.base import Backend

from .conftest import session_cookie
from .conftest import store_of


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
