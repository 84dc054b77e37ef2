"""Everything a backend keeps, read as a thief with a copy of the store would: rows,
hashes and sets, files and their names, the memory backend's dicts."""

from __future__ import annotations

import base64
import json
import os

import sqlalchemy as sa

from flask_serversession.backends.base import Backend
from flask_serversession.backends.filesystem import FileSystemBackend
from flask_serversession.backends.memory import MemoryBackend
from flask_serversession.backends.redis import RedisBackend
from flask_serversession.backends.sqlalchemy import SQLAlchemyBackend


def raw_dump(backend: Backend) -> bytes:
    """Every byte the store holds for ``backend`` (names included), concatenated."""
    backend = getattr(backend, "inner", backend)
    parts: list[bytes] = []
    if isinstance(backend, MemoryBackend):
        parts.append(repr(backend._records).encode())
        parts.append(repr(backend._users).encode())
    elif isinstance(backend, RedisBackend):
        client = backend.client
        for name in client.scan_iter(match=backend.key_prefix + "*"):
            parts.append(name if isinstance(name, bytes) else name.encode())
            kind = client.type(name)
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if kind == "hash":
                fields = client.hgetall(name)
                parts.append(repr(fields).encode())
            elif kind == "set":
                parts.append(repr(client.smembers(name)).encode())
            elif kind == "zset":
                parts.append(repr(client.zrange(name, 0, -1, withscores=True)).encode())
            elif kind == "string":
                parts.append(client.get(name) or b"")
    elif isinstance(backend, SQLAlchemyBackend):
        with backend.engine.connect() as conn:
            for row in conn.execute(sa.select(backend.table)):
                parts.append(repr(tuple(row)).encode())
    elif isinstance(backend, FileSystemBackend):
        for root, dirs, files in os.walk(backend.directory):
            parts.append(repr((root, dirs, files)).encode())
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    parts.append(f.read())
    else:
        raise TypeError(f"no raw reader for {type(backend).__name__}")
    assert parts, "the store holds nothing"
    return b"\n".join(parts)


def forms(secret: str) -> list[bytes]:
    """How ``secret`` could show in a dump: plain, JSON-escaped, in base64 at any alignment."""
    raw = secret.encode()
    found = [raw, json.dumps(secret).encode(), json.dumps(json.dumps(secret)).encode()[1:-1]]
    for shift in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            # The characters that depend on the secret's bytes alone, at this alignment.
            text = encode(b"\x00" * shift + raw)
            start = (shift * 4 + 2) // 3 + 1
            found.append(text[start : len(text) - 4])
    return found


def shows(dump: bytes, secret: str) -> list[bytes]:
    """The forms of ``secret`` that ``dump`` holds; empty when none."""
    return [form for form in forms(secret) if form and form in dump]


def holds(dump: bytes, secret: str) -> bool:
    return bool(shows(dump, secret))
