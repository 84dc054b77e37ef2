"""The examples of docs/encryption.rst (and the sealed sizes of docs/storage.rst), run."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from flask_serversession import ServerSession
from flask_serversession.backends.memory import MemoryBackend
from flask_serversession.ciphers import Keyring
from flask_serversession.ciphers import read_key
from flask_serversession.serialization import SessionSerializer

from .conftest import add_views
from .conftest import session_cookie
from .support.raw_store import raw_dump
from .support.raw_store import shows

DOCS = Path(__file__).parent.parent / "docs"


def page_app(backend: MemoryBackend) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="docs secret key", SERVERSESSION_BACKEND=backend)
    add_views(app)
    return app


def test_encryption_page_turning_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    made = subprocess.run(
        [sys.executable, "-c", "import secrets; print(secrets.token_urlsafe(32))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    monkeypatch.setenv("SESSION_ENCRYPTION_KEY", made)
    backend = MemoryBackend()
    app = page_app(backend)
    # docs/encryption.rst, "Turning it on"
    app.config["SERVERSESSION_ENCRYPTION_KEY"] = os.environ["SESSION_ENCRYPTION_KEY"]
    ServerSession(app)
    client = app.test_client()
    client.post("/set", json={"email": "dinah@example.org"})
    assert client.get("/get/email").json == {"value": "dinah@example.org"}
    assert not shows(raw_dump(backend), "dinah@example.org")


def test_encryption_page_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = MemoryBackend()
    old_key, new_key = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    before = page_app(backend)
    before.config["SERVERSESSION_ENCRYPTION_KEY"] = old_key
    ServerSession(before)
    client = before.test_client()
    client.post("/set", json={"cart": ["tea"]})
    monkeypatch.setenv("SESSION_ENCRYPTION_KEY", new_key)
    monkeypatch.setenv("SESSION_ENCRYPTION_KEY_OLD", old_key)
    app = page_app(backend)
    # docs/encryption.rst, "Rotating the key", step 1
    app.config["SERVERSESSION_ENCRYPTION_KEY"] = os.environ["SESSION_ENCRYPTION_KEY"]
    app.config["SERVERSESSION_ENCRYPTION_KEY_FALLBACKS"] = [
        os.environ["SESSION_ENCRYPTION_KEY_OLD"],
    ]
    ServerSession(app)
    rotated = app.test_client()
    rotated.set_cookie("session", session_cookie(client) or "")
    assert rotated.get("/get/cart").json == {"value": ["tea"]}


def test_encryption_page_reencrypt() -> None:
    page = (DOCS / "encryption.rst").read_text()
    shown = page.split("$ flask --app myapp serversession reencrypt\n")[1:]
    expected = [part.splitlines()[1].strip() for part in shown]
    backend = MemoryBackend()
    old_key = secrets.token_urlsafe(32)
    before = page_app(backend)
    before.config["SERVERSESSION_ENCRYPTION_KEY"] = old_key
    ServerSession(before)
    for _ in range(3):
        before.test_client().post("/set", json={"a": 1})
    app = page_app(backend)
    app.config["SERVERSESSION_ENCRYPTION_KEY"] = secrets.token_urlsafe(32)
    app.config["SERVERSESSION_ENCRYPTION_KEY_FALLBACKS"] = [old_key]
    ServerSession(app)
    for line in expected:
        result = app.test_cli_runner().invoke(args=["serversession", "reencrypt"])
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[-1] == line


def test_storage_page_sealed_sizes() -> None:
    page = (DOCS / "storage.rst").read_text()
    rows = re.findall(
        r"^(``.+?``|[\d,]+ characters)\s+([\d,]+)\s+([\d,]+)\s+\+([\d,]+)$", page, re.M
    )
    assert len(rows) == 6
    keyring = Keyring(read_key(secrets.token_bytes(32), "key"))
    serializer = SessionSerializer()
    values: dict[str, t.Any] = {
        "``True``": True,
        '``"alice"``': "alice",
        '``{"items": [1, 2, 3]}``': {"items": [1, 2, 3]},
    }
    for shown, plain, stored, overhead in rows:
        number = re.match(r"([\d,]+) characters", shown)
        value = "x" * int(number[1].replace(",", "")) if number else values[shown]
        text = serializer.dumps(value)
        sealed = keyring.seal(text, keyring.associated("0" * 64), "cart")
        n = len(text)
        assert (n, len(sealed)) == (int(plain.replace(",", "")), int(stored.replace(",", "")))
        assert len(sealed) - n == int(overhead.replace(",", ""))
        assert len(sealed) == 9 + 4 * -(-(n + 28) // 3)
