from __future__ import annotations

import json
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

from ...serialization import one_shot_encoder
from ..base import CorruptRecordError
from ..base import Delta
from ..base import Record

# The layout of a session hash: one "d:<name>" field per session key, the
# times, the data's size and how many keys it has (kept by the scripts, see
# scripts.UPDATE), and for a session with a user, the user and until when
# the user's set is sure to live. The Lua scripts check the same layout.
DATA = "d:"
CREATED = "created_us"
EXPIRES = "expires_us"
SIZE = "size"
KEYS = "keys"
USER = "user"
INDEXED = "indexed_us"
#: What follows the key prefix in the name of a user's set.
USERS = "user:"
# A user's set lives at least this much longer than the expiry of the
# session indexed last in it (or as long again as that session has left, if
# more), so a session renewed while in use moves the set's TTL once per span.
INDEX_SPAN = timedelta(days=1)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_INDEX_SPAN_US = INDEX_SPAN // _MICROSECOND
# Times are whole microseconds since the epoch, at most 17 digits (year 3138),
# so the update script and parse agree on what a valid number is.
_MAX_DIGITS = 17
_DATA_LENGTH = len(DATA)
_DATA_BYTES = DATA.encode()
_COUNTS = frozenset({SIZE.encode(), KEYS.encode()})
# Replies are read as bytes even from a client built with decode_responses,
# so damaged bytes reach parse instead of failing inside the client.
# The option of ``execute_command`` that returns bytes whatever
# ``decode_responses`` says; redis-py and valkey-py both read it.
RAW: dict[str, t.Any] = {"NEVER_DECODE": True}
# ASCII out, whatever the text: non-ASCII characters go as \u escapes.
_pack = one_shot_encoder(json.JSONEncoder(separators=(",", ":")))


def micros(value: datetime) -> int:
    return (value - EPOCH) // _MICROSECOND


def ms_up(us: int) -> int:
    # Round up, so Redis never drops a session before its ``expires_at``.
    return -(-us // 1000)


def drop_at_ms(expires_us: int, kept: timedelta) -> int:
    """When Redis removes a session's hash: ``kept`` after it expires.

    Until then a request that brings the session's token meets the expired
    record, so the store can send ``session_expired`` as on other backends.
    """
    return ms_up(expires_us + kept // _MICROSECOND)


def create_numbers(
    record: Record, kept: timedelta, deadline_ms: int, now: datetime | None = None
) -> str:
    """The numbers argument of the create script (see scripts.CREATE), or with ``now``
    of the add script (scripts.ADD)."""
    expires_us = micros(record.expires_at)
    numbers = [drop_at_ms(expires_us, kept), deadline_ms, micros(record.created_at), expires_us]
    return _numbers(*numbers) if now is None else _numbers(*numbers, micros(now))


def update_numbers(
    now_us: int, expires_us: int, delta: Delta, kept: timedelta, deadline_ms: int
) -> str:
    """The numbers argument of the update script (see scripts.UPDATE)."""
    size = -1 if delta.max_size is None else delta.max_size
    drop_at = drop_at_ms(expires_us, kept)
    # Integer arithmetic and one f-string: this runs on every save.
    return f"{now_us} {expires_us} {drop_at} {size} {len(delta.set)} {deadline_ms}"


def _numbers(*values: int) -> str:
    # One space-separated argument: redis-py packs each argument in Python,
    # which costs more than the script's splitting.
    return " ".join(map(str, values))


def packed(parts: list[str]) -> str:
    """Strings as one script argument: a JSON array, which the scripts read with ``cjson.decode``.

    redis-py packs each argument of a command in Python; one argument for
    every field costs less than one per field.
    """
    return _pack(parts)


def index_deadline_ms(expires_at: datetime, now: datetime) -> int:
    """Until when a user's set must live for a session that expires at ``expires_at``."""
    return index_deadline_from_us(micros(expires_at), micros(now))


def index_deadline_from_us(expires_us: int, now_us: int) -> int:
    """:func:`index_deadline_ms` of times in microseconds since the epoch."""
    return ms_up(max(expires_us, now_us) + max(expires_us - now_us, _INDEX_SPAN_US))


def wrong_type(reply: object) -> bool:
    """Whether a reply is Redis's error for a key of another type."""
    # Of either client library: its ResponseError, or what a pipeline returns for one.
    return isinstance(reply, Exception) and str(reply).startswith("WRONGTYPE")


def text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def whole(value: bytes | str) -> int:
    """The number a time field holds; ValueError (TypeError for None) when it is not one."""
    digits = value.decode() if isinstance(value, bytes) else value
    if type(digits) is not str:
        raise TypeError(f"{value!r} is not text")
    if not (digits.isascii() and digits.isdigit() and len(digits) <= _MAX_DIGITS):
        raise ValueError(f"{value!r} is not a whole number")
    return int(digits)


def fields_of(reply: t.Any) -> t.Mapping[t.Any, t.Any]:
    """The fields of a hash as ``HGETALL`` replies: a dict (parsed, or RESP3),
    or a flat list of names and values (RESP2, unparsed).

    :raises CorruptRecordError: a list of odd length.
    """
    if type(reply) is not list:
        return t.cast("t.Mapping[t.Any, t.Any]", reply)
    if len(reply) % 2:
        raise CorruptRecordError("a hash reply with a name and no value")
    return dict(zip(reply[::2], reply[1::2], strict=True))


def parse(fields: t.Mapping[t.Any, t.Any]) -> tuple[Record, int | None]:
    """Build a record from the fields of a session hash.

    Returns it with its ``indexed_us`` (None for a session without a user).
    Every load pays for this, so it goes over the fields once.

    :raises CorruptRecordError: the fields are not laid out as a session.
    """
    data: dict[str, str] = {}
    own: dict[str, str] = {}
    try:
        for name, value in fields.items():
            # Replies are bytes (RAW); bytes that are not UTF-8 raise
            # UnicodeDecodeError, a ValueError. Listings give text.
            if type(name) is bytes:
                if name[:_DATA_LENGTH] == _DATA_BYTES and type(value) is bytes:
                    data[name[_DATA_LENGTH:].decode()] = value.decode()
                    continue
                if name in _COUNTS:
                    # The save script checks these and recomputes them when
                    # they are absent or damaged; a load has no use for them.
                    continue
                name = name.decode()
            value = value.decode() if type(value) is bytes else value
            if name.startswith(DATA):
                data[name[_DATA_LENGTH:]] = value
            else:
                own[name] = value
        created_at = EPOCH + whole(own.pop(CREATED)) * _MICROSECOND
        expires_at = EPOCH + whole(own.pop(EXPIRES)) * _MICROSECOND
        user = own.pop(USER, None)
        indexed = own.pop(INDEXED, None)
        indexed_us = None if indexed is None else whole(indexed)
        # Text names (listings) reach this; bytes ones skipped them above.
        own.pop(SIZE, None)
        own.pop(KEYS, None)
    except (KeyError, ValueError, OverflowError, TypeError) as e:
        raise CorruptRecordError(f"bad session hash: {e!r}") from e
    if own:
        raise CorruptRecordError(f"unexpected field {next(iter(own))!r} in session hash")
    if (user is None) != (indexed_us is None):
        raise CorruptRecordError(f"session hash with only one of {USER!r} and {INDEXED!r}")
    return Record(data, created_at, expires_at, user=user), indexed_us


def decode(fields: t.Mapping[t.Any, t.Any]) -> Record:
    """Build a record from the fields of a session hash (see :func:`parse`)."""
    return parse(fields)[0]


def escape_glob(value: str) -> str:
    """Return ``value`` as a ``SCAN MATCH`` pattern that matches it literally."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in value)
