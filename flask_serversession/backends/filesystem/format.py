from __future__ import annotations

import json
import struct
import typing as t
import zlib
from datetime import datetime
from datetime import timedelta
from datetime import timezone

from ...serialization import one_shot_encoder
from ..base import CorruptRecordError
from ..base import Record

#: Format 1: the body is the JSON object of the session's values.
MAGIC = b"FSS\x01"
#: Format 2: the body is ``[user, values]``, for a session that has a user.
USER_MAGIC = b"FSS\x02"
#: Magic, creation and expiry (microseconds since the epoch), CRC32 of the rest.
HEADER = struct.Struct(">4sqqI")

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
# ASCII out: non-ASCII characters go as \u escapes.
_encode = one_shot_encoder(json.JSONEncoder(separators=(",", ":")))


def to_us(value: datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


def from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def pack(magic: bytes, created_us: int, expires_us: int, body: bytes) -> bytes:
    """Return the content of a session file."""
    crc = zlib.crc32(struct.pack(">qq", created_us, expires_us) + body)
    return HEADER.pack(magic, created_us, expires_us, crc) + body


def unpack(path: str, content: bytes) -> tuple[bytes, int, int, bytes]:
    """Return ``(magic, created_us, expires_us, body)`` of a session file's content."""
    size = HEADER.size
    if len(content) < size:
        raise CorruptRecordError(f"{path!r} is truncated ({len(content)} bytes)")
    magic, created, expires, crc = HEADER.unpack_from(content)
    if magic not in (MAGIC, USER_MAGIC):
        raise CorruptRecordError(f"{path!r} has an unknown format {magic!r}")
    if zlib.crc32(content[len(magic) : size - 4] + content[size:]) != crc:
        raise CorruptRecordError(f"{path!r} fails its checksum")
    return magic, created, expires, content[size:]


def header_expiry(header: bytes | None) -> int | None:
    """Return the expiry in a session file's header; None if it is not one."""
    if header is None or len(header) < HEADER.size:
        return None
    magic, _created, expires, _crc = HEADER.unpack_from(header)
    return expires if magic in (MAGIC, USER_MAGIC) else None


def encode(user: str | None, data: t.Mapping[str, str]) -> tuple[bytes, bytes]:
    """Return ``(magic, body)``; a session without a user keeps format 1.

    So files of sessions that have no user stay readable by older versions.
    """
    if user is None:
        return MAGIC, _encode(data).encode("ascii")
    return USER_MAGIC, _encode([user, data]).encode("ascii")


def decode(path: str, magic: bytes, body: bytes) -> tuple[str | None, dict[str, str]]:
    """Return ``(user, values)`` of a session file's body."""
    try:
        data = json.loads(body)
    except ValueError as e:
        raise CorruptRecordError(f"{path!r} holds no valid JSON: {e}") from e
    user = None
    if magic == USER_MAGIC:
        if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], str)):
            raise CorruptRecordError(f"{path!r} does not hold a user and values")
        user, data = data
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise CorruptRecordError(f"{path!r} does not hold an object of strings")
    return user, data


def record(path: str, content: bytes) -> Record:
    """Return the record in a session file's content."""
    magic, created, expires, body = unpack(path, content)
    user, data = decode(path, magic, body)
    try:
        return Record(data, from_us(created), from_us(expires), user=user)
    except OverflowError as e:
        raise CorruptRecordError(f"{path!r} holds an impossible time") from e
