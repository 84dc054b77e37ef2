from __future__ import annotations

import typing as t

import pytest
from flask import Flask
from flask import session

from flask_serversession.store import utcnow

from .conftest import CountingBackend
from .conftest import session_cookie


@pytest.fixture
def counting() -> CountingBackend:
    return CountingBackend()


@pytest.fixture
def client(make_app: t.Callable[..., Flask], counting: CountingBackend) -> t.Any:
    client = make_app(counting).test_client()
    client.post("/set", json={"user": "alice", "cart": ["tea"], "n": 1})
    counting.calls.clear()
    return client


def test_untouched_request_costs_nothing(client: t.Any, counting: CountingBackend) -> None:
    response = client.get("/untouched")
    assert counting.calls == {}
    assert "Set-Cookie" not in response.headers
    assert "Vary" not in response.headers


def test_untouched_request_without_cookie_sets_no_cookie(
    make_app: t.Callable[..., Flask], counting: CountingBackend
) -> None:
    response = make_app(counting).test_client().get("/untouched")
    assert counting.calls == {}
    assert "Set-Cookie" not in response.headers


def test_empty_new_session_creates_no_record(
    make_app: t.Callable[..., Flask], counting: CountingBackend
) -> None:
    response = make_app(counting).test_client().get("/dump")
    assert response.json == {}
    assert counting.calls == {}
    assert "Set-Cookie" not in response.headers
    assert response.headers["Vary"] == "Cookie"


def test_read_request_is_one_load_and_no_write(client: t.Any, counting: CountingBackend) -> None:
    assert client.get("/get/user").json == {"value": "alice"}
    assert counting.calls == {"load": 1}


def test_dumping_with_list_values_writes_nothing(client: t.Any, counting: CountingBackend) -> None:
    client.get("/dump")
    assert counting.calls == {"load": 1}


@pytest.mark.parametrize(
    "access",
    [
        lambda: "user" in session,
        lambda: len(session),
        lambda: list(session),
        lambda: session.keys(),
        lambda: session.items(),
        lambda: session.get("x"),
        lambda: session.new,
        lambda: session.permanent,
    ],
    ids=["in", "len", "iter", "keys", "items", "get", "new", "permanent"],
)
def test_every_kind_of_access_loads_once_and_varies(
    make_app: t.Callable[..., Flask],
    counting: CountingBackend,
    access: t.Callable[[], object],
) -> None:
    app = make_app(counting)

    @app.get("/access")
    def view() -> str:
        access()
        access()
        return "ok"

    client = app.test_client()
    client.post("/set", json={"user": "alice"})
    counting.calls.clear()
    response = client.get("/access")
    assert counting.calls == {"load": 1}
    assert "Cookie" in response.headers["Vary"]


def test_nested_mutation_is_saved_as_a_one_key_delta(
    client: t.Any, counting: CountingBackend
) -> None:
    client.post("/append/cart", json="milk")
    assert counting.calls == {"load": 1, "update": 1}
    (delta,) = counting.deltas
    assert set(delta.set) == {"cart"}
    assert delta.deleted == frozenset()
    assert client.get("/get/cart").json == {"value": ["tea", "milk"]}


def test_assigning_an_equal_value_writes_nothing(client: t.Any, counting: CountingBackend) -> None:
    client.post("/set", json={"user": "alice"})
    assert counting.calls == {"load": 1}


def test_deleting_a_key_is_a_delete_delta(client: t.Any, counting: CountingBackend) -> None:
    client.post("/delete/n")
    (delta,) = counting.deltas
    assert delta.set == {}
    assert delta.deleted == {"n"}


def test_emptying_the_session_deletes_record_and_cookie(
    make_app: t.Callable[..., Flask], counting: CountingBackend
) -> None:
    app = make_app(counting)

    @app.post("/empty")
    def empty() -> str:
        session.clear()
        return "emptied"

    client = app.test_client()
    client.post("/set", json={"user": "alice"})
    response = client.post("/empty")
    assert counting.calls["delete"] == 1
    assert session_cookie(client) is None
    assert "Set-Cookie" in response.headers
    assert counting.count(utcnow()) == 0
