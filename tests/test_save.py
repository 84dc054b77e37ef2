from __future__ import annotations

import enum
import functools
import typing as t
import uuid
from collections import OrderedDict
from datetime import date
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from flask import flash
from flask import Flask
from flask import get_flashed_messages
from flask import session
from markupsafe import Markup

from flask_serversession import ServerSession
from flask_serversession import SessionTooLargeError

from .conftest import store_of


def test_tagged_types_round_trip(app: Flask) -> None:
    values = {
        "tuple": (1, "two"),
        "bytes": b"\x00\xff",
        "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "markup": Markup("<b>bold</b>"),
        "nested": {"list": [1, 2.5, None, True], "deeper": [(b"x", {" t": ["tag-like"]})]},
        "tag-like key": {" di": {" t": 1}},
    }

    @app.post("/store")
    def store() -> str:
        session.update(values)
        return "stored"

    @app.get("/check")
    def check() -> str:
        assert dict(session) == values
        assert type(session["markup"]) is Markup
        return "same"

    client = app.test_client()
    client.post("/store")
    assert client.get("/check").text == "same"


class Color(enum.IntEnum):
    RED = 1


class Size(str, enum.Enum):
    LARGE = "L"


BERLIN = ZoneInfo("Europe/Berlin")

EXACT_VALUES = [
    datetime(2026, 1, 2, 3, 4, 5, 123456),
    datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(94, 1, 2, tzinfo=timezone.utc),
    datetime(9999, 12, 31, 23, 59, 59, 999999),
    datetime(2026, 3, 1, tzinfo=timezone(-timedelta(hours=3, minutes=7, seconds=5))),
    float("inf"),
    -0.0,
    2**80,
    "\x00 NUL, \u2028, ☃",
    {"\x00": "NUL in a nested key is JSON like any other"},
]


@pytest.mark.parametrize("value", EXACT_VALUES, ids=repr)
def test_values_come_back_exactly(app: Flask, value: t.Any) -> None:
    @app.post("/store")
    def store() -> str:
        session["value"] = value
        return "stored"

    @app.get("/load")
    def load() -> t.Any:
        loaded = session["value"]
        return {"same": loaded == value and repr(loaded) == repr(value)}

    client = app.test_client()
    client.post("/store")
    assert client.get("/load").json == {"same": True}


def test_datetimes_written_by_version_0_1_still_read(app: Flask) -> None:
    store = app.extensions["serversession"]
    old_text = '{" d":"Fri, 02 Jan 2026 03:04:05 GMT"}'
    assert store.serializer.loads(old_text) == datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "value",
    [
        datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN),
        datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN),
        datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=BERLIN),
        datetime(2026, 6, 1, tzinfo=ZoneInfo("America/St_Johns")),
    ],
    ids=repr,
)
def test_a_datetime_keeps_its_zone_on_every_backend(backend_app: Flask, value: datetime) -> None:
    @backend_app.post("/store")
    def store() -> str:
        session["meeting"] = value
        return "stored"

    @backend_app.get("/load")
    def load() -> t.Any:
        loaded = session["meeting"]
        day_after = loaded + timedelta(days=1)
        return {
            "zone": loaded.tzinfo.key,
            "wall": loaded.replace(tzinfo=None).isoformat(),
            "offset": loaded.utcoffset().total_seconds(),
            # Arithmetic across a change of daylight saving time: the zone's rules hold.
            "day_after_offset": day_after.utcoffset().total_seconds(),
        }

    client = backend_app.test_client()
    client.post("/store")
    day_after = value + timedelta(days=1)
    assert client.get("/load").json == {
        "zone": t.cast(ZoneInfo, value.tzinfo).key,
        "wall": value.replace(tzinfo=None).isoformat(),
        "offset": t.cast(timedelta, value.utcoffset()).total_seconds(),
        "day_after_offset": t.cast(timedelta, day_after.utcoffset()).total_seconds(),
    }


LOSSY_VALUES = [
    {1, 2},
    frozenset({1}),
    Decimal("1.10"),
    date(2026, 1, 2),
    object(),
    {1: "a"},
    Color.RED,
    Size.LARGE,
    OrderedDict(a=1),
    [1, {2: "deep"}],
    "\ud800 a lone surrogate",
    "\ud800\udfff a pair of surrogates that JSON would join",
    datetime(2026, 1, 2, tzinfo=timezone(timedelta(microseconds=1))),
    # A named fixed offset would lose its name; a wall time its zone skips
    # would come back as another wall time.
    datetime(2026, 1, 2, tzinfo=timezone(timedelta(hours=1), "CET")),
    datetime(2026, 3, 29, 2, 30, tzinfo=BERLIN),
    functools.reduce(lambda inner, _: [inner], range(300), []),
]


@pytest.mark.parametrize("value", LOSSY_VALUES, ids=repr)
def test_values_that_would_not_round_trip_are_refused(app: Flask, value: t.Any) -> None:
    @app.post("/lossy")
    def lossy() -> str:
        session["value"] = value
        return "never saved"

    with pytest.raises(TypeError, match="'value' holds a"):
        app.test_client().post("/lossy")


def test_unserializable_value_is_refused_and_nothing_saved(app: Flask) -> None:
    @app.post("/bad")
    def bad() -> str:
        session["a"] = 2
        session["tags"] = {"a", "b"}
        return "never saved"

    client = app.test_client()
    client.post("/set", json={"a": 1})
    with pytest.raises(TypeError, match="'tags' holds a set"):
        client.post("/bad")
    assert client.get("/dump").json == {"a": 1}


def test_oversize_save_raises_and_keeps_previous_data(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(SERVERSESSION_MAX_SIZE=1000)
    client = app.test_client()
    client.post("/set", json={"a": "x" * 400})
    with pytest.raises(SessionTooLargeError, match="SERVERSESSION_MAX_SIZE"):
        client.post("/set", json={"b": "y" * 700})
    assert client.get("/dump").json == {"a": "x" * 400}


def test_oversize_new_session_creates_nothing(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(SERVERSESSION_MAX_SIZE=100)
    client = app.test_client()
    with pytest.raises(SessionTooLargeError):
        client.post("/set", json={"a": "x" * 200})
    with app.app_context():
        assert ServerSession().count() == 0


def test_oversize_programmatic_calls_raise(make_app: t.Callable[..., Flask]) -> None:
    app = make_app(SERVERSESSION_MAX_SIZE=100)
    extension = ServerSession()
    with app.app_context():
        with pytest.raises(SessionTooLargeError):
            extension.create({"a": "x" * 200})
        token = extension.create({"a": 1})
        with pytest.raises(SessionTooLargeError):
            extension.update(token, {"a": "x" * 200})
        assert extension.get(token) == {"a": 1}


def test_flash_messages_survive_a_redirect(app: Flask) -> None:
    @app.post("/flash")
    def add_flash() -> str:
        flash("saved")
        return "flashed"

    @app.get("/show")
    def show() -> str:
        return ",".join(get_flashed_messages())

    client = app.test_client()
    client.post("/flash")
    assert client.get("/show").text == "saved"
    assert client.get("/show").text == ""


@pytest.mark.parametrize("key", [1, ("a",), "nul\x00key", "lone\ud800surrogate"], ids=repr)
def test_bad_session_keys_are_refused_by_name(app: Flask, key: t.Any) -> None:
    @app.post("/bad-key")
    def bad_key() -> str:
        session["fine"] = 1
        session[key] = "value"
        return "never saved"

    client = app.test_client()
    with pytest.raises(TypeError, match="Session key"):
        client.post("/bad-key")
    assert client.get_cookie("session") is None


def test_keys_keep_their_order_across_saves_on_every_backend(backend_app: Flask) -> None:
    """Keys come back in the order they were first set, as with Flask's cookie session."""

    @backend_app.post("/first")
    def first() -> str:
        for key in ("zeta", "alpha", "mid", "cart"):
            session[key] = [] if key == "cart" else key
        return "ok"

    @backend_app.post("/more")
    def more() -> str:
        session["cart"].append("book")  # a change in place
        session["beta"] = 2  # a new key, then two at once
        session.update({"omega": 3, "aaa": 4})
        session["alpha"] = "again"  # an existing key keeps its place
        return "ok"

    @backend_app.get("/keys")
    def keys() -> t.Any:
        return {"keys": list(session), "cart": session["cart"], "alpha": session["alpha"]}

    client = backend_app.test_client()
    client.post("/first")
    client.post("/more")
    in_order_set = ["zeta", "alpha", "mid", "cart", "beta", "omega", "aaa"]
    engine = getattr(store_of(backend_app).backend, "engine", None)
    if engine is not None and engine.dialect.name == "postgresql":
        # jsonb keeps an object's keys shorter first, then by their bytes.
        in_order_set.sort(key=lambda k: (len(k.encode()), k.encode()))
    assert client.get("/keys").json == {"keys": in_order_set, "cart": ["book"], "alpha": "again"}
