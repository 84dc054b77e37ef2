"""Key rotation for encryption at rest (docs: encryption.rst): ``flask serversession
reencrypt`` on every backend, and a save that lands while it runs."""

from __future__ import annotations

import secrets
import threading
import typing as t
from datetime import datetime
from datetime import timedelta

from flask import Flask

from flask_serversession import ServerSession
from flask_serversession.backends.base import Backend
from flask_serversession.backends.base import Delta
from flask_serversession.backends.base import Record
from flask_serversession.backends.encrypted import EncryptedBackend
from flask_serversession.backends.memory import MemoryBackend
from flask_serversession.ciphers import Keyring
from flask_serversession.ciphers import read_key
from flask_serversession.reencryption import reencrypt

from .conftest import session_cookie
from .conftest import store_of
from .support.raw_store import raw_dump
from .support.raw_store import shows

MakeApp = t.Callable[..., Flask]
OLD = secrets.token_hex(32)
NEW = secrets.token_urlsafe(32)
SECRET = "Recognizable-Token-5b0a"
USER = "carol@example.com"


def command(app: Flask, *args: str) -> t.Any:
    return app.test_cli_runner().invoke(args=["serversession", "reencrypt", *args])


def sealed_values(backend: Backend) -> list[str]:
    inner = t.cast(EncryptedBackend, backend).inner
    now = datetime.now().astimezone()
    return [text for _key, record in inner.items(now) for text in record.data.values()]


def test_reencrypt_leaves_every_session_readable_with_the_new_key_alone(
    make_app: MakeApp, backend: Backend
) -> None:
    config = {"SERVERSESSION_USER_KEY": "uid"}
    plain = make_app(backend, **config)
    old = make_app(backend, SERVERSESSION_ENCRYPTION_KEY=OLD, **config)
    tokens = []
    for i, app in enumerate([plain, old, old, old]):
        client = app.test_client()
        client.post("/set", json={"uid": USER, "cart": f"{SECRET}-{i}"})
        tokens.append(session_cookie(client))
    rotated = make_app(
        backend,
        SERVERSESSION_ENCRYPTION_KEY=NEW,
        SERVERSESSION_ENCRYPTION_KEY_FALLBACKS=[OLD],
        **config,
    )
    # A session written after the switch: its new values are already current.
    late = rotated.test_client()
    late.set_cookie("session", tokens[1] or "")
    late.post("/set", json={"extra": 1})

    result = command(rotated)
    assert result.exit_code == 0, result.output
    assert "Re-encrypted 4 sessions; 0 already current, 0 ended meanwhile." in result.output
    prefix = Keyring(read_key(NEW, "key")).current_prefix
    values = sealed_values(store_of(rotated).backend)
    assert len(values) == 4 * 3 + 1 and all(v.startswith(prefix) for v in values)
    assert not shows(raw_dump(backend), SECRET)

    alone = make_app(backend, SERVERSESSION_ENCRYPTION_KEY=NEW, **config)
    with alone.app_context():
        ext = ServerSession()
        for i, token in enumerate(tokens):
            assert token is not None
            assert ext.get(token)["cart"] == f"{SECRET}-{i}"
        # The user index moved to the new key's digest too.
        assert len(ext.user_sessions(USER)) == 4
    again = command(rotated)
    assert "Re-encrypted 0 sessions; 4 already current" in again.output


def test_reencrypt_without_a_key_says_what_to_set(make_app: MakeApp) -> None:
    result = command(make_app("memory"))
    assert result.exit_code == 1
    assert "SERVERSESSION_ENCRYPTION_KEY is not set, so there is nothing to re-encrypt" in (
        result.output
    )


class Pausing(Backend):
    """A real backend whose first ``rewrite`` waits, once it has its arguments, until released."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.reached = threading.Event()
        self.release = threading.Event()

    def rewrite(self, key: str, expected: Record, delta: Delta, now: datetime) -> bool:
        if not self.reached.is_set():
            self.reached.set()
            assert self.release.wait(30)
        return self.inner.rewrite(key, expected, delta, now)

    def load(self, key: str) -> Record | None:
        return self.inner.load(key)

    def create(self, key: str, record: Record) -> None:
        self.inner.create(key, record)

    def update(self, key: str, delta: Delta, now: datetime) -> bool:
        return self.inner.update(key, delta, now)

    def take(self, key: str, now: datetime) -> Record | None:
        return self.inner.take(key, now)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def purge_expired(self, now: datetime, *, longest_lifetime: timedelta | None = None) -> int:
        return self.inner.purge_expired(now, longest_lifetime=longest_lifetime)

    def count(self, now: datetime) -> int:
        return self.inner.count(now)

    def items(self, now: datetime) -> t.Iterator[tuple[str, Record]]:
        return self.inner.items(now)

    def clear(self) -> int:
        return self.inner.clear()

    def user_records(self, user: str, now: datetime) -> list[tuple[str, Record]]:
        return self.inner.user_records(user, now)


def test_a_save_that_lands_during_reencrypt_is_kept(make_app: MakeApp, backend: Backend) -> None:
    old = make_app(backend, SERVERSESSION_ENCRYPTION_KEY=OLD)
    client = old.test_client()
    client.post("/set", json={"a": "before", "b": "untouched"})
    token = session_cookie(client)
    pausing = Pausing(backend)
    rotated = make_app(
        pausing, SERVERSESSION_ENCRYPTION_KEY=NEW, SERVERSESSION_ENCRYPTION_KEY_FALLBACKS=[OLD]
    )
    done: list[t.Any] = []
    worker = threading.Thread(target=lambda: done.append(reencrypt(store_of(rotated))))
    worker.start()
    try:
        # reencrypt has read the session and is about to write it back...
        assert pausing.reached.wait(30)
        # ... when a request changes one of its values.
        writer = rotated.test_client()
        writer.set_cookie("session", token or "")
        writer.post("/set", json={"a": "during"})
    finally:
        pausing.release.set()
        worker.join(30)
    assert not worker.is_alive()
    assert done[0]["rewritten"] == 1
    alone = make_app(backend, SERVERSESSION_ENCRYPTION_KEY=NEW)
    with alone.app_context():
        assert ServerSession().get(token or "") == {"a": "during", "b": "untouched"}


def test_reencrypt_reports_a_session_no_key_opens(make_app: MakeApp) -> None:
    backend = MemoryBackend()
    lost = make_app(backend, SERVERSESSION_ENCRYPTION_KEY=secrets.token_bytes(32))
    lost.test_client().post("/set", json={"a": 1})
    old = make_app(backend, SERVERSESSION_ENCRYPTION_KEY=OLD)
    old.test_client().post("/set", json={"a": 2})
    app = make_app(
        backend, SERVERSESSION_ENCRYPTION_KEY=NEW, SERVERSESSION_ENCRYPTION_KEY_FALLBACKS=[OLD]
    )
    result = command(app)
    assert result.exit_code == 1
    assert "Re-encrypted 1 session; 0 already current, 0 ended meanwhile." in result.output
    assert "Left as stored, since no key decrypts them: 1 session." in result.output
    assert len(backend._records) == 2


def test_reencrypt_while_sessions_move_between_stores(make_app: MakeApp) -> None:
    # SERVERSESSION_MIGRATE_FROM and a key rotation at once: reencrypt moves the
    # sessions still in the old store and seals them with the current key.
    old_store, new_store = MemoryBackend(), MemoryBackend()
    before = make_app(old_store, SERVERSESSION_ENCRYPTION_KEY=OLD)
    tokens = []
    for i in range(3):
        client = before.test_client()
        client.post("/set", json={"cart": f"{SECRET}-{i}"})
        tokens.append(session_cookie(client))
    moving = make_app(
        new_store,
        SERVERSESSION_MIGRATE_FROM=old_store,
        SERVERSESSION_ENCRYPTION_KEY=NEW,
        SERVERSESSION_ENCRYPTION_KEY_FALLBACKS=[OLD],
    )
    result = command(moving)
    assert result.exit_code == 0, result.output
    assert "Re-encrypted 3 sessions" in result.output
    alone = make_app(new_store, SERVERSESSION_ENCRYPTION_KEY=NEW)
    for i, token in enumerate(tokens):
        reader = alone.test_client()
        reader.set_cookie("session", token or "")
        assert reader.get("/get/cart").json == {"value": f"{SECRET}-{i}"}
    now = datetime.now().astimezone()
    assert list(old_store.items(now)) == []
