"""Mutable values are snapshotted when the app is first handed them, not at load.

A change in place must be saved whichever accessor handed the value out;
a value the request never reads is neither snapshotted nor compared.
"""

from __future__ import annotations

import copy
import typing as t

import pytest
from flask import Flask
from flask import session

from flask_serversession.session import ServerSideSession

from .conftest import CountingBackend


def _cart(values: t.Iterable[t.Any]) -> list[str]:
    """The cart among ``values``, as the test stores it."""
    (cart,) = [v for v in values if v == ["tea"]]
    return cart


# Each hands out the stored cart by a different accessor of the session.
ACCESSORS: dict[str, t.Callable[[], list[str]]] = {
    "getitem": lambda: session["cart"],
    "get": lambda: session.get("cart"),
    "setdefault": lambda: session.setdefault("cart", []),
    "values": lambda: _cart(session.values()),
    "items": lambda: next(v for k, v in session.items() if k == "cart"),
    "copy": lambda: session.copy()["cart"],
    "copy.copy": lambda: copy.copy(session)["cart"],
    "dict()": lambda: dict(session)["cart"],
    "unpacking": lambda: {**session}["cart"],
    "or": lambda: (session | {})["cart"],
    "comprehension": lambda: {k: session[k] for k in session}["cart"],
}


@pytest.fixture
def counting() -> CountingBackend:
    return CountingBackend()


@pytest.fixture
def app(make_app: t.Callable[..., Flask], counting: CountingBackend) -> Flask:
    return make_app(counting)


@pytest.mark.parametrize("name", ACCESSORS)
def test_a_change_in_place_is_saved_whichever_accessor_handed_the_value_out(
    app: Flask, counting: CountingBackend, name: str
) -> None:
    hand_out = ACCESSORS[name]

    @app.post("/change")
    def change() -> str:
        hand_out().append("milk")
        return str(session.modified)

    client = app.test_client()
    client.post("/set", json={"user": "alice", "cart": ["tea"], "tags": ["x"]})
    counting.deltas.clear()
    assert client.post("/change").text == "True"
    (delta,) = counting.deltas
    assert set(delta.set) == {"cart"}
    assert client.get("/get/cart").json == {"value": ["tea", "milk"]}


def test_a_value_changed_after_another_was_read_is_saved(
    app: Flask, counting: CountingBackend
) -> None:
    @app.post("/change")
    def change() -> str:
        session["tags"].append("y")
        session["cart"].append("milk")
        session["tags"].append("z")
        return "ok"

    client = app.test_client()
    client.post("/set", json={"cart": ["tea"], "tags": ["x"]})
    counting.deltas.clear()
    client.post("/change")
    (delta,) = counting.deltas
    assert set(delta.set) == {"cart", "tags"}
    assert client.get("/dump").json == {"cart": ["tea", "milk"], "tags": ["x", "y", "z"]}


def test_a_value_deleted_and_assigned_again_is_saved(app: Flask, counting: CountingBackend) -> None:
    @app.post("/change")
    def change() -> str:
        cart = session.pop("cart")
        cart.append("milk")
        session["cart"] = cart
        return "ok"

    client = app.test_client()
    client.post("/set", json={"cart": ["tea"]})
    client.post("/change")
    assert client.get("/get/cart").json == {"value": ["tea", "milk"]}


def test_only_values_handed_out_are_snapshotted(app: Flask) -> None:
    seen: dict[str, t.Any] = {}

    @app.get("/read")
    def read() -> str:
        session.get("user")
        stored = t.cast(ServerSideSession, session).stored
        assert stored is not None
        seen["before"] = (set(stored.snapshots), set(stored.unread))
        session["cart"]
        seen["after"] = (set(stored.snapshots), set(stored.unread))
        return "ok"

    client = app.test_client()
    client.post("/set", json={"user": "alice", "cart": ["tea"], "tags": ["x"]})
    client.get("/read")
    assert seen["before"] == (set(), {"cart", "tags"})
    assert seen["after"] == ({"cart"}, {"tags"})
