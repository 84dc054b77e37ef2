"""Encryption at rest (docs: encryption.rst): keys, sealing, rotation with fallbacks,
plaintext sessions, damage, the size limit and the user index, on the memory backend."""

from __future__ import annotations

import base64
import logging
import secrets
import typing as t

import pytest
from flask import Flask
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from flask_serversession import BackendError
from flask_serversession import ConfigError
from flask_serversession import ServerSession
from flask_serversession.backends.base import Delta
from flask_serversession.backends.encrypted import EncryptedBackend
from flask_serversession.backends.memory import MemoryBackend
from flask_serversession.backends.sqlalchemy import SQLAlchemyBackend
from flask_serversession.ciphers import Keyring
from flask_serversession.ciphers import read_key
from flask_serversession.ciphers import SealError
from flask_serversession.serialization import SessionSerializer

from .conftest import session_cookie
from .conftest import store_of
from .strategies import good_values

MakeApp = t.Callable[..., Flask]
KEY = secrets.token_bytes(32)
NEW_KEY = secrets.token_bytes(32)
SECRET = "Recognizable-Cart-9c1f"
USER = "alice.liddell@example.org"


def encrypted(make_app: MakeApp, backend: t.Any, key: t.Any = KEY, **config: t.Any) -> Flask:
    return make_app(backend, SERVERSESSION_ENCRYPTION_KEY=key, **config)


def inner_records(app: Flask) -> dict[str, t.Any]:
    backend = store_of(app).backend
    assert isinstance(backend, EncryptedBackend)
    return t.cast(MemoryBackend, backend.inner)._records


def token_of(client: t.Any) -> str:
    token = session_cookie(client)
    assert token is not None
    return token


@pytest.mark.parametrize(
    "value",
    [
        KEY,
        bytearray(KEY),
        KEY.hex(),
        KEY.hex().upper(),
        base64.b64encode(KEY).decode(),
        base64.urlsafe_b64encode(KEY).decode().rstrip("="),
        f" {base64.b64encode(KEY).decode()}\n",
    ],
)
def test_a_key_is_32_bytes_in_any_of_its_forms(value: t.Any) -> None:
    assert read_key(value, "SERVERSESSION_ENCRYPTION_KEY") == KEY


@pytest.mark.parametrize(
    ("value", "what"),
    [
        (secrets.token_bytes(16), "16 bytes"),
        (secrets.token_hex(16), "16 bytes"),
        (secrets.token_urlsafe(24), "24 bytes"),
        ("correct horse battery staple, 32", "of no known form"),
        (12345, "a int of no known form"),
        ("", "0 bytes"),
    ],
)
def test_a_key_of_another_length_is_a_config_error(
    make_app: MakeApp, value: t.Any, what: str
) -> None:
    with pytest.raises(ConfigError) as e:
        encrypted(make_app, "memory", value)
    message = str(e.value)
    assert message.startswith("SERVERSESSION_ENCRYPTION_KEY is not valid")
    assert what in message and "secrets.token_urlsafe(32)" in message
    if isinstance(value, str) and value:
        assert value not in message


def test_fallbacks_are_checked_too(make_app: MakeApp) -> None:
    name = "SERVERSESSION_ENCRYPTION_KEY_FALLBACKS"
    with pytest.raises(ConfigError, match=rf"^{name}\[1\] is not valid: it holds 31 bytes"):
        encrypted(make_app, "memory", **{name: [KEY, secrets.token_bytes(31)]})
    with pytest.raises(ConfigError, match=rf"^{name} is not valid: it is a str"):
        encrypted(make_app, "memory", **{name: KEY.hex()})
    with pytest.raises(ConfigError, match=rf"^{name} is set but SERVERSESSION_ENCRYPTION_KEY"):
        make_app("memory", **{name: [KEY]})


def test_values_and_metadata_are_sealed_and_come_back(make_app: MakeApp) -> None:
    app = encrypted(make_app, "memory", SERVERSESSION_USER_KEY="uid")
    client = app.test_client()
    client.post("/set", json={"cart": SECRET, "uid": USER, "n": [1, 2.5, None]})
    assert client.get("/dump").json == {"cart": SECRET, "uid": USER, "n": [1, 2.5, None]}
    [record] = inner_records(app).values()
    assert all(text.startswith("~") for text in record.data.values())
    assert {"cart", "uid", "n", "_serversession_seen"} == record.data.keys()
    assert SECRET not in repr(record) and USER not in repr(record)
    assert record.user is not None and len(record.user) == 64 and USER not in record.user


def test_each_write_seals_anew(make_app: MakeApp) -> None:
    app = encrypted(make_app, "memory")
    client = app.test_client()
    client.post("/set", json={"a": SECRET})
    [first] = inner_records(app).values()
    client.post("/set", json={"a": SECRET + "!"})
    client.post("/set", json={"a": SECRET})
    [again] = inner_records(app).values()
    assert first.data["a"] != again.data["a"]
    assert client.get("/get/a").json == {"value": SECRET}


def test_an_app_without_a_key_keeps_its_backend_as_it_is(make_app: MakeApp) -> None:
    app = make_app("memory")
    assert type(store_of(app).backend) is MemoryBackend


def test_a_value_moved_to_another_session_does_not_open(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    app = encrypted(make_app, "memory")
    victim, thief = app.test_client(), app.test_client()
    victim.post("/set", json={"cart": SECRET})
    thief.post("/set", json={"cart": "mine"})
    records = inner_records(app)
    victim_key, thief_key = list(records)
    records[thief_key].data["cart"] = records[victim_key].data["cart"]
    token = token_of(thief)
    with caplog.at_level(logging.ERROR, "flask_serversession"):
        assert thief.get("/get/cart").json == {"value": None}
    assert "does not open" in caplog.text and "belongs to another session" in caplog.text
    assert victim.get("/get/cart").json == {"value": SECRET}
    with app.app_context(), pytest.raises(BackendError, match="is damaged"):
        ServerSession().get(token)


def test_a_value_moved_to_another_key_does_not_open(make_app: MakeApp) -> None:
    app = encrypted(make_app, "memory")
    client = app.test_client()
    client.post("/set", json={"cart": SECRET, "note": "hello"})
    [record] = inner_records(app).values()
    record.data["note"] = record.data["cart"]
    assert client.get("/dump").json == {}
    # The request started a fresh session: the damaged one is not served again.
    assert client.get("/get/cart").json == {"value": None}


def test_a_changed_value_does_not_open(make_app: MakeApp) -> None:
    app = encrypted(make_app, "memory")
    client = app.test_client()
    client.post("/set", json={"cart": SECRET})
    [record] = inner_records(app).values()
    text = record.data["cart"]
    record.data["cart"] = text[:-2] + ("A" if text[-2] != "A" else "B") + text[-1]
    assert client.get("/get/cart").json == {"value": None}


def test_plaintext_sessions_open_and_are_sealed_when_written(make_app: MakeApp) -> None:
    backend = MemoryBackend()
    plain = make_app(backend).test_client()
    plain.post("/set", json={"cart": SECRET, "other": "kept"})
    [record] = backend._records.values()
    assert record.data["cart"] == f'"{SECRET}"'
    client = encrypted(make_app, backend).test_client()
    client.set_cookie("session", token_of(plain))
    assert client.get("/dump").json == {"cart": SECRET, "other": "kept"}
    client.post("/set", json={"cart": SECRET + "2"})
    [record] = backend._records.values()
    assert record.data["cart"].startswith(Keyring(KEY).current_prefix)
    assert record.data["other"] == '"kept"'
    assert client.get("/dump").json == {"cart": SECRET + "2", "other": "kept"}


def test_rotation_fallbacks_open_and_the_key_seals(make_app: MakeApp) -> None:
    backend = MemoryBackend()
    old = encrypted(make_app, backend, KEY)
    with old.app_context():
        token = ServerSession().create({"cart": SECRET, "keep": "old"})
    new = encrypted(make_app, backend, NEW_KEY, SERVERSESSION_ENCRYPTION_KEY_FALLBACKS=[KEY])
    with new.app_context():
        ext = ServerSession()
        assert ext.get(token) == {"cart": SECRET, "keep": "old"}
        ext.update(token, {"cart": SECRET + "2", "keep": "old"})
    current = Keyring(NEW_KEY).current_prefix
    [record] = backend._records.values()
    assert record.data["cart"].startswith(current)
    # Without the fallback, the old key's values no longer open.
    alone = encrypted(make_app, backend, NEW_KEY)
    with alone.app_context():
        assert ServerSession().get(token)["cart"] == SECRET + "2"


def test_a_session_under_a_key_no_longer_configured_is_damaged(make_app: MakeApp) -> None:
    backend = MemoryBackend()
    old = encrypted(make_app, backend, KEY)
    with old.app_context():
        token = ServerSession().create({"cart": SECRET})
    new = encrypted(make_app, backend, NEW_KEY)
    with new.app_context(), pytest.raises(BackendError, match="not configured"):
        ServerSession().get(token)


def test_the_size_limit_counts_the_sealed_size(make_app: MakeApp) -> None:
    from flask_serversession import SessionTooLargeError

    app = encrypted(make_app, "memory", SERVERSESSION_MAX_SIZE=200)
    with app.app_context():
        ext = ServerSession()
        # 2 + 150 bytes of plaintext fit; sealed they take about 4/3 of that and more.
        with pytest.raises(SessionTooLargeError):
            ext.create({"a": "x" * 148})
        token = ext.create({"a": "x" * 60})
        with pytest.raises(SessionTooLargeError):
            ext.update(token, {"a": "x" * 60, "b": "y" * 60})
        assert ext.get(token) == {"a": "x" * 60}


def test_users_are_indexed_by_digest_and_listed_by_id(make_app: MakeApp) -> None:
    backend = MemoryBackend()
    app = encrypted(make_app, backend, SERVERSESSION_USER_KEY="uid")
    clients = [app.test_client() for _ in range(3)]
    for client in clients:
        client.post("/set", json={"uid": USER, "cart": SECRET})
    assert USER not in repr(backend._records) and USER not in repr(backend._users)
    with app.app_context():
        ext = ServerSession()
        infos = ext.user_sessions(USER)
        assert len(infos) == 3 and {i.user_id for i in infos} == {USER}
        # After a rotation, sessions indexed under the old key's digest are still found.
        rotated = encrypted(
            make_app,
            backend,
            NEW_KEY,
            SERVERSESSION_USER_KEY="uid",
            SERVERSESSION_ENCRYPTION_KEY_FALLBACKS=[KEY],
        )
    fresh = rotated.test_client()
    fresh.post("/set", json={"uid": USER})
    with rotated.app_context():
        ext = ServerSession()
        assert len(ext.user_sessions(USER)) == 4
        assert ext.revoke_user(USER, keep_current=False) == 4
        assert ext.user_sessions(USER) == []


def test_the_per_user_cap_holds(make_app: MakeApp) -> None:
    app = encrypted(
        make_app, "memory", SERVERSESSION_USER_KEY="uid", SERVERSESSION_MAX_SESSIONS_PER_USER=2
    )
    clients = [app.test_client() for _ in range(3)]
    for client in clients:
        client.post("/set", json={"uid": USER})
    assert [c.get("/get/uid").json["value"] for c in clients] == [None, USER, USER]


def test_check_warns_of_extras_in_clear_columns(make_app: MakeApp, tmp_path: t.Any) -> None:
    from flask_serversession.checks import run_checks

    def extras(values: t.Mapping[str, t.Any]) -> dict[str, t.Any]:
        return {}

    app = encrypted(make_app, "memory", SERVERSESSION_SQLALCHEMY_EXTRAS=extras)
    [finding] = [f for f in run_checks(app) if f.id == "serversession.W020"]
    assert finding.setting == "SERVERSESSION_SQLALCHEMY_EXTRAS"
    plain = make_app("memory", SERVERSESSION_SQLALCHEMY_EXTRAS=extras)
    assert not [f for f in run_checks(plain) if f.id == "serversession.W020"]
    # A SQL backend built by the app, with its own callback.
    backend = SQLAlchemyBackend.from_url(f"sqlite:///{tmp_path}/s.sqlite", extras=extras)
    built = encrypted(make_app, backend)
    [finding] = [f for f in run_checks(built) if f.id == "serversession.W020"]
    assert finding.value == "test_check_warns_of_extras_in_clear_columns.<locals>.extras"
    backend.close()


@settings(max_examples=150, deadline=None)
@given(value=good_values, name=st.text(min_size=1).filter(lambda s: "\x00" not in s))
def test_values_round_trip_through_the_codec(value: t.Any, name: str) -> None:
    try:
        name.encode()
        text = SessionSerializer().dumps(value)
    except (TypeError, ValueError):
        # Refused by the serializer (or a name with a lone surrogate): nothing to seal.
        return
    keyring = Keyring(NEW_KEY, [KEY])
    session = keyring.associated(secrets.token_hex(32))
    sealed = keyring.seal(text, session, name)
    assert sealed.isascii() and sealed.startswith(keyring.current_prefix)
    assert keyring.open(sealed, session, name) == text
    with pytest.raises(SealError):
        keyring.open(sealed, keyring.associated(secrets.token_hex(32)), name)
    with pytest.raises(SealError):
        keyring.open(sealed, session, name + "x")
    # A fallback opens what the old key sealed.
    assert keyring.open(Keyring(KEY).seal(text, session, name), session, name) == text


def test_a_delta_carries_sealed_values() -> None:
    inner = MemoryBackend()
    backend = EncryptedBackend(inner, Keyring(KEY))
    from datetime import datetime
    from datetime import timedelta
    from datetime import timezone

    from flask_serversession.backends.base import Record

    now = datetime.now(timezone.utc)
    key = secrets.token_hex(32)
    backend.create(key, Record({"a": '"1"'}, now, now + timedelta(hours=1)))
    assert backend.update(key, Delta(now + timedelta(hours=1), {"b": '"2"'}), now)
    assert inner._records[key].data["b"].startswith("~")
    record = backend.load(key)
    assert record is not None and record.data == {"a": '"1"', "b": '"2"'}
