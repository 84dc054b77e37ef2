"""Session rows that no save could have written, in SQLite and PostgreSQL tables.

Met by a request, such a row is a fresh session with a new id and an error
in the log, never an error page; purge removes it once no lifetime keeps it.
"""

from __future__ import annotations

import hashlib
import logging
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest
import sqlalchemy as sa
from flask import Flask
from flask import session

from flask_serversession.backends.base import CorruptRecordError
from flask_serversession.backends.base import Delta
from flask_serversession.backends.base import Record
from flask_serversession.backends.sqlalchemy import SQLAlchemyBackend

from ..conftest import session_cookie
from ..conftest import store_of

NOW = datetime.now(timezone.utc).replace(microsecond=0)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)

#: (column, stored value, dialects): what a broken writer or a hand edit may leave.
DAMAGES: dict[str, tuple[str, t.Any, frozenset[str]]] = {
    "data not JSON": ("data", "not json", frozenset({"sqlite", "postgresql"})),
    "data cut short": ("data", '{"user": "\\"al', frozenset({"sqlite", "postgresql"})),
    "data a list": ("data", '["user"]', frozenset({"sqlite", "postgresql"})),
    "data a JSON string": ("data", '"user"', frozenset({"sqlite", "postgresql"})),
    "data a number value": ("data", '{"user": 1}', frozenset({"sqlite", "postgresql"})),
    "data a null value": ("data", '{"user": null}', frozenset({"sqlite", "postgresql"})),
    "data an integer": ("data", 42, frozenset({"sqlite"})),
    "data a blob": ("data", b'{"user": "\\"alice\\""}', frozenset({"sqlite"})),
    "created_at garbage": ("created_at", "garbage", frozenset({"sqlite"})),
    "created_at no date": ("created_at", "2024-13-45 25:61:00", frozenset({"sqlite"})),
    "created_at an integer": ("created_at", 1_700_000_000, frozenset({"sqlite"})),
    "expires_at garbage": ("expires_at", "garbage", frozenset({"sqlite"})),
    "created_at infinity": ("created_at", "infinity", frozenset({"postgresql"})),
    "created_at -infinity": ("created_at", "-infinity", frozenset({"postgresql"})),
    "created_at past 9999": ("created_at", "10000-01-01 00:00+00", frozenset({"postgresql"})),
    "expires_at infinity": ("expires_at", "infinity", frozenset({"postgresql"})),
}


def key_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


BACKENDS = {
    "sqlite": "sqlite",
    "postgres": "postgresql",
    "fsa_sqlite": "sqlite",
    "fsa_postgres": "postgresql",
}
CASES = [
    pytest.param((name, damage), id=f"{name}-{damage}")
    for name, dialect in BACKENDS.items()
    for damage, (_column, _value, dialects) in DAMAGES.items()
    if dialect in dialects
]


@pytest.fixture(params=list(BACKENDS))
def sql_backend(request: pytest.FixtureRequest) -> SQLAlchemyBackend:
    return t.cast(SQLAlchemyBackend, request.getfixturevalue(f"{request.param}_backend"))


@pytest.fixture(params=CASES)
def damaged(request: pytest.FixtureRequest) -> tuple[SQLAlchemyBackend, str, t.Any]:
    """A backend, and a column and value it cannot read."""
    name, damage = request.param
    backend = t.cast(SQLAlchemyBackend, request.getfixturevalue(f"{name}_backend"))
    column, value, _dialects = DAMAGES[damage]
    return backend, column, value


def plant(backend: SQLAlchemyBackend, key: str, column: str, value: t.Any) -> None:
    """Store ``value`` in ``column`` of the row ``key`` with raw SQL, past the column type."""
    mark = "?" if backend.engine.dialect.name == "sqlite" else "%s"
    table = backend.table.name
    with backend.engine.begin() as conn:
        conn.exec_driver_sql(
            f'UPDATE "{table}" SET "{column}" = {mark} WHERE "key" = {mark}', (value, key)
        )


def keys_stored(backend: SQLAlchemyBackend) -> list[str]:
    with backend.engine.connect() as conn:
        return list(conn.execute(sa.select(backend.table.c.key).order_by("key")).scalars())


def test_damaged_row_is_corrupt_to_every_reader(
    damaged: tuple[SQLAlchemyBackend, str, t.Any], caplog: pytest.LogCaptureFixture
) -> None:
    sql_backend, *damage = damaged
    good, bad = key_of("good"), key_of("bad")
    for key in (good, bad):
        sql_backend.create(key, Record({"user": '"alice"'}, NOW, NOW + HOUR))
    plant(sql_backend, bad, *damage)

    with pytest.raises(CorruptRecordError):
        sql_backend.load(bad)
    assert not sql_backend.update(bad, Delta(NOW + HOUR, {"x": '"1"'}, max_size=1000), NOW)
    assert not sql_backend.update(bad, Delta(NOW + HOUR, {}, frozenset({"user"})), NOW)
    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        assert [k for k, _ in sql_backend.items(NOW)] == [good]
        assert sql_backend.take(bad, NOW) is None
    assert [r.name for r in caplog.records] == ["flask_serversession"] * 2
    assert keys_stored(sql_backend) == [good]


def test_damaged_row_in_a_request_is_a_fresh_session(
    make_app: t.Callable[..., Flask],
    damaged: tuple[SQLAlchemyBackend, str, t.Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    sql_backend, *damage = damaged
    app = make_app(sql_backend)

    @app.post("/probe")
    def probe() -> dict[str, t.Any]:
        seen = {"new": session.new, "data": dict(session)}
        session["after"] = "damage"
        return seen

    client = app.test_client()
    assert client.post("/set", json={"user": "alice"}).status_code == 200
    token = session_cookie(client)
    store = store_of(app)
    key = store.storage_key(t.cast(str, store.sid_from(token)))
    plant(sql_backend, key, *damage)

    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        response = client.post("/probe")
    assert response.status_code == 200
    assert response.json == {"new": True, "data": {}}
    new_token = session_cookie(client)
    assert new_token is not None and new_token != token
    errors = [r for r in caplog.records if r.name == "flask_serversession"]
    assert errors and all(r.levelno == logging.ERROR for r in errors)
    assert key in errors[0].getMessage()
    assert client.get("/dump").json == {"after": "damage"}


def test_purge_removes_rows_no_save_could_have_written(sql_backend: SQLAlchemyBackend) -> None:
    sqlite = sql_backend.engine.dialect.name == "sqlite"
    rows = {
        "live": Record({"user": '"a"'}, NOW, NOW + HOUR),
        "expired": Record({"user": '"a"'}, NOW - DAY, NOW - HOUR),
        "damaged data, expired": Record({}, NOW - DAY, NOW - HOUR),
        "damaged data, live": Record({}, NOW, NOW + HOUR),
        "expiry past any lifetime": Record({}, NOW, NOW + 3 * DAY),
        "expiry at the longest lifetime": Record({}, NOW, NOW + DAY),
        "expiry unreadable": Record({}, NOW, NOW + HOUR),
    }
    for name, row in rows.items():
        sql_backend.create(key_of(name), row)
    for name in ("damaged data, expired", "damaged data, live"):
        plant(sql_backend, key_of(name), "data", "not json")
    plant(
        sql_backend, key_of("expiry unreadable"), "expires_at", "garbage" if sqlite else "infinity"
    )

    assert sql_backend.purge_expired(NOW) == 2
    assert sql_backend.purge_expired(NOW, longest_lifetime=DAY) == 2
    left = {key_of(name) for name in rows} - set(keys_stored(sql_backend))
    assert left == {
        key_of(name) for name in ("expired", "damaged data, expired", "expiry past any lifetime")
    } | {key_of("expiry unreadable")}
    assert set(keys_stored(sql_backend)) == {
        key_of(name) for name in ("live", "damaged data, live", "expiry at the longest lifetime")
    }
    assert sql_backend.purge_expired(NOW, longest_lifetime=timedelta.max) == 0


def test_add_replaces_a_damaged_row(damaged: tuple[SQLAlchemyBackend, str, t.Any]) -> None:
    sql_backend, *damage = damaged
    key = key_of("bad")
    sql_backend.create(key, Record({"user": '"alice"'}, NOW, NOW + HOUR))
    plant(sql_backend, key, *damage)
    moved = Record({"user": '"bob"'}, NOW, NOW + 2 * HOUR)
    assert sql_backend.add(key, moved, NOW) is True, "a row that does not read counts as absent"
    assert sql_backend.load(key) == moved
