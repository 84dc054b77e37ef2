from __future__ import annotations

import hashlib
import json
import logging
import os
import pwd
import struct
import typing as t
import zlib
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from pathlib import Path

import pytest
from flask import Flask

from flask_serversession.backends.base import Record
from flask_serversession.backends.filesystem import FileSystemBackend

from ..conftest import session_cookie

Damage = t.Callable[[Path, Path], None]


def rewrite_body(path: Path, body: bytes) -> None:
    """Give the file ``body`` under a valid header, so only the body is wrong."""
    times = path.read_bytes()[4:20]
    crc = struct.pack(">I", zlib.crc32(times + body))
    path.write_bytes(FileSystemBackend.magic + times + crc + body)


def to_symlink(path: Path, other: Path) -> None:
    # Points at another user's valid session: adopting it would hijack it.
    path.unlink()
    path.symlink_to(other)


def to_directory(path: Path, other: Path) -> None:
    path.unlink()
    path.mkdir()


def to_fifo(path: Path, other: Path) -> None:
    path.unlink()
    os.mkfifo(path, 0o600)


def to_foreign(path: Path, other: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give files to another user")
    os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)


def to_symlinked_shard(path: Path, other: Path) -> None:
    shard = path.parent
    moved = shard.parent.parent / f"moved-{shard.name}"
    shard.rename(moved)
    shard.symlink_to(moved)


DAMAGE = [
    pytest.param(lambda p, o: p.write_bytes(b""), id="empty"),
    pytest.param(lambda p, o: p.write_bytes(p.read_bytes()[:12]), id="truncated-header"),
    pytest.param(lambda p, o: p.write_bytes(p.read_bytes()[:-4]), id="truncated-body"),
    pytest.param(lambda p, o: p.write_bytes(b"JUNK" + p.read_bytes()[4:]), id="bad-magic"),
    pytest.param(lambda p, o: p.write_bytes(p.read_bytes()[:-2] + b"?}"), id="bad-crc"),
    pytest.param(lambda p, o: rewrite_body(p, b'{"user": "mal'), id="garbage-json"),
    pytest.param(lambda p, o: rewrite_body(p, b'["user"]'), id="json-list"),
    pytest.param(lambda p, o: rewrite_body(p, b'{"user": 1}'), id="json-not-strings"),
    pytest.param(to_symlink, id="symlink"),
    pytest.param(to_directory, id="directory"),
    pytest.param(to_fifo, id="fifo"),
    pytest.param(to_foreign, id="foreign-owned"),
    pytest.param(to_symlinked_shard, id="symlinked-shard"),
]
#: The damages of a session file's content, which a new file simply replaces.
CONTENT_DAMAGE = {"empty", "truncated-header", "truncated-body", "bad-magic", "bad-crc"}
CONTENT_DAMAGE |= {"garbage-json", "json-list", "json-not-strings"}


@pytest.fixture
def fs_app(make_app: t.Callable[..., Flask], root: Path) -> Flask:
    return make_app(FileSystemBackend(root))


def session_files(root: Path) -> set[Path]:
    return {p for p in root.glob("*/*") if len(p.name) == 64}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_session_file_gives_a_fresh_session(
    fs_app: Flask, root: Path, damage: Damage, caplog: pytest.LogCaptureFixture
) -> None:
    other = fs_app.test_client()
    other.post("/set", json={"user": "bob"})
    bobs = session_files(root)
    client = fs_app.test_client()
    assert client.post("/set", json={"user": "alice"}).status_code == 200
    old = session_cookie(client)
    (path,) = session_files(root) - bobs
    (bob,) = bobs
    damage(path, bob)

    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        response = client.get("/dump")
    assert response.status_code == 200
    assert response.get_json() == {}
    errors = [r for r in caplog.records if r.name == "flask_serversession"]
    assert errors and all(r.levelno == logging.ERROR for r in errors)

    assert client.post("/set", json={"n": 1}).status_code == 200
    new = session_cookie(client)
    assert new is not None and new != old
    assert json.loads(client.get("/dump").data) == {"n": 1}
    assert other.get("/dump").get_json() == {"user": "bob"}


@pytest.mark.parametrize("damage", [p for p in DAMAGE if p.id in CONTENT_DAMAGE])
def test_add_replaces_a_damaged_session_file(root: Path, damage: Damage) -> None:
    backend = FileSystemBackend(root)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    key = hashlib.sha256(b"damaged").hexdigest()
    backend.create(key, Record({"user": '"alice"'}, now, now + timedelta(hours=1)))
    damage(root / key[:2] / key, root)
    moved = Record({"user": '"bob"'}, now, now + timedelta(hours=2))
    assert backend.add(key, moved, now) is True, "a file that does not read counts as absent"
    assert backend.load(key) == moved
