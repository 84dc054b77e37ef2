"""What a session's record keeps of its rotating secrets: their hashes, when each was given
and first used, and each one sealed for the holder of the one before it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import typing as t
from dataclasses import dataclass
from dataclasses import replace
from datetime import datetime
from datetime import timedelta
from datetime import timezone

if t.TYPE_CHECKING:
    from ..serialization import SessionSerializer

#: The stored key of a session's rotation state (metadata, hidden from the session dict).
ROTATION_KEY = "_serversession_rotation"
#: The stored key of when the current secret was first used: a plain write of
#: its own, so that the first request with a new token pays no compare-and-set.
#: Of fixed width, so that noting the use never grows the session.
USED_KEY = "_serversession_rotation_used"
#: How many secrets a record keeps: the current one and the two before it.
KEPT = 3
#: The digest that stands for the bare id: a token from before the first
#: rotation, or made without rotation, carries no secret.
BARE = ""

_DIGEST = b"flask-serversession rotating secret\x00"
_SEAL = b"flask-serversession sealed secret\x00"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SECRET_BYTES = 16
# 16 bytes in base64 without padding: the last character carries four unused bits.
_SIXTEEN_BYTES = re.compile("[A-Za-z0-9_-]{21}[AQgw]")
_USED = re.compile(r"([A-Za-z0-9_-]{21}[AQgw])\|(\d{17}|-{17})")


def new_secret() -> str:
    """A new rotating secret: 128 random bits, 22 URL-safe characters."""
    return secrets.token_urlsafe(_SECRET_BYTES)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _material(sid: str, secret: str | None) -> bytes:
    return sid.encode("ascii") if secret is None else f"{sid}.{secret}".encode("ascii")


def digest(sid: str, secret: str | None) -> str:
    """What the record keeps of a token's secret: a hash that makes no token.

    The id is hashed with it, and the store keeps only the id's own sha256,
    so a copy of the store holds neither part.
    """
    if secret is None:
        return BARE
    return _b64(hashlib.sha256(_DIGEST + _material(sid, secret)).digest()[:_SECRET_BYTES])


def _pad(sid: str, secret: str | None) -> bytes:
    return hmac.new(_material(sid, secret), _SEAL, hashlib.sha256).digest()[:_SECRET_BYTES]


def seal(sid: str, holder: str | None, secret: str) -> str:
    """``secret``, readable only with the token that carries ``holder`` (None: the bare id)."""
    pad = _pad(sid, holder)
    return _b64(bytes(a ^ b for a, b in zip(_unb64(secret), pad, strict=True)))


def unseal(sid: str, holder: str | None, sealed: str) -> str:
    """The secret :func:`seal` sealed for the token that carries ``holder``."""
    return seal(sid, holder, sealed)


def _timestamp(value: datetime) -> float:
    return (value - _EPOCH).total_seconds()


def _time(value: t.Any) -> datetime:
    if type(value) not in (int, float) or not 0 <= value < 1e11:
        raise ValueError(f"a rotation time is {value!r}")
    return _EPOCH + timedelta(seconds=value)


@dataclass(frozen=True, slots=True)
class Secret:
    """One rotating secret as the record keeps it.

    :param digest: its :func:`digest` (:data:`BARE` for the bare id).
    :param given: when a response first carried it.
    :param used: when a request first brought it back (None until then).
    """

    digest: str
    given: datetime
    used: datetime | None


@dataclass(frozen=True, slots=True)
class State:
    """A session's secrets, newest first, and ``sealed[i]``: secret ``i`` sealed for the
    holder of secret ``i + 1``."""

    secrets: tuple[Secret, ...]
    sealed: tuple[str, ...] = ()

    def find(self, sid: str, secret: str | None) -> int | None:
        """The position of a token's secret (0: current), or None when it is not kept."""
        wanted = digest(sid, secret)
        for position, kept in enumerate(self.secrets):
            if hmac.compare_digest(kept.digest, wanted):
                return position
        return None

    def current(self, sid: str, secret: str | None, position: int) -> str | None:
        """The current secret, from the secret at ``position`` (None: the bare id)."""
        for sealed in reversed(self.sealed[:position]):
            secret = unseal(sid, secret, sealed)
        return secret

    def used(self, now: datetime) -> State:
        """This state with the current secret used from ``now`` on."""
        first = replace(self.secrets[0], used=now)
        return replace(self, secrets=(first, *self.secrets[1:]))

    def rotated(self, sid: str, secret: str | None, new: str, now: datetime) -> State:
        """This state after the holder of the current ``secret`` rotated it to ``new``."""
        held = self.secrets[0]
        if held.used is None:
            held = replace(held, used=now)
        kept = (Secret(digest(sid, new), now, None), held, *self.secrets[1:])[:KEPT]
        sealed = (seal(sid, secret, new), *self.sealed)[: KEPT - 1]
        return State(kept, sealed)


def used_text(serializer: SessionSerializer, digest: str, used: datetime | None) -> str:
    """The stored text of :data:`USED_KEY`: ``digest``'s secret first used at ``used``."""
    when = "-" * 17 if used is None else f"{round(_timestamp(used) * 1_000_000):017d}"
    return serializer.dumps(f"{digest}|{when}")


def read_used(serializer: SessionSerializer, text: str) -> tuple[str, datetime | None]:
    """The digest and first use stored as :data:`USED_KEY`; ValueError when malformed."""
    value = serializer.loads(text)
    match = _USED.fullmatch(value) if type(value) is str else None
    if match is None:
        raise ValueError(f"the first use of a rotating secret is {value!r}")
    when = match.group(2)
    return match.group(1), None if when[0] == "-" else _time(int(when) / 1_000_000)


def _sixteen_bytes(value: t.Any) -> bool:
    return type(value) is str and _SIXTEEN_BYTES.fullmatch(value) is not None


def fresh(now: datetime) -> State:
    """The state of an id given now and in use (a new or regenerated session)."""
    return State((Secret(BARE, now, now),))


def read(serializer: SessionSerializer, meta: t.Mapping[str, str], created_at: datetime) -> State:
    """The state stored in ``meta`` (:data:`ROTATION_KEY`, with :data:`USED_KEY`); a
    session without one has had its bare id since it was created, in use.

    :raises ValueError: the stored text is not of the shape :func:`dump` writes.
    """
    text = meta.get(ROTATION_KEY)
    if text is None:
        return fresh(created_at)
    state = _parse(serializer, text)
    used = meta.get(USED_KEY)
    if used is not None and state.secrets[0].used is None:
        digest, when = read_used(serializer, used)
        if when is not None and digest == state.secrets[0].digest:
            state = state.used(when)
    return state


def _parse(serializer: SessionSerializer, text: str) -> State:
    value = serializer.loads(text)
    if type(value) is not list or len(value) != 2:
        raise ValueError(f"the rotation state is {value!r}")
    kept, sealed = value
    if type(kept) is not list or not 0 < len(kept) <= KEPT or type(sealed) is not list:
        raise ValueError(f"the rotation state is {value!r}")
    if len(sealed) != len(kept) - 1 or not all(_sixteen_bytes(s) for s in sealed):
        raise ValueError(f"the rotation state is {value!r}")
    found = []
    for item in kept:
        if type(item) is not list or len(item) != 3:
            raise ValueError(f"a rotating secret is {item!r}")
        if item[0] != BARE and not _sixteen_bytes(item[0]):
            raise ValueError(f"a rotating secret is {item!r}")
        used = None if item[2] is None else _time(item[2])
        found.append(Secret(item[0], _time(item[1]), used))
    return State(tuple(found), tuple(sealed))


def dump(serializer: SessionSerializer, state: State) -> str:
    """The stored text of ``state``."""
    kept = [
        [s.digest, _timestamp(s.given), None if s.used is None else _timestamp(s.used)]
        for s in state.secrets
    ]
    return serializer.dumps([kept, list(state.sealed)])
