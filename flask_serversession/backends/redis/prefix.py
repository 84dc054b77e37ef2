"""The Redis backend's work on every key of its prefix: count, list, clear, limit TTLs.

These scan the whole prefix (on a cluster, every primary) in batches, one
pipelined round trip per batch, and never run on a request's path.
"""

from __future__ import annotations

import contextlib
import typing as t
from datetime import datetime

from ...log import logger
from ..base import CorruptRecordError
from ..base import Record
from . import scripts
from .codec import decode
from .codec import escape_glob
from .codec import EXPIRES
from .codec import micros
from .codec import RAW
from .codec import USERS
from .codec import whole
from .codec import wrong_type

if t.TYPE_CHECKING:
    from .clients import Client

_BATCH = 500


class Host(t.Protocol):
    """What the scans use of the backend: its client, prefix and pipelined round trips."""

    client: Client
    key_prefix: str

    def _pipelined(self, commands: t.Iterable[tuple[t.Any, ...]]) -> list[t.Any]: ...

    def _each(self, names: list[t.Any], command: str, *args: t.Any) -> list[t.Any]: ...


def scan(host: Host, *, sessions: bool = True) -> t.Iterator[list[t.Any]]:
    """Yield the prefix's keys in batches; on a cluster, from every primary.

    With ``sessions``, the keys of session hashes only, not users' sets.
    """
    match = escape_glob(host.key_prefix) + "*"
    users = (host.key_prefix + USERS).encode()
    batch: list[t.Any] = []
    for name in host.client.scan_iter(match=match, count=_BATCH, **RAW):
        if sessions and name.startswith(users):
            continue
        batch.append(name)
        if len(batch) >= _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def limit_ttls(host: Host, ttl_ms: int) -> int:
    """Give every key of the prefix that has no TTL one of ``ttl_ms``; return how many."""
    limited = 0
    for names in scan(host, sessions=False):
        ttls = host._each(names, "PTTL")
        lasting = [n for n, ttl in zip(names, ttls, strict=True) if ttl == -1]
        for result in host._pipelined(("EVAL", scripts.LIMIT, 1, n, ttl_ms) for n in lasting):
            if isinstance(result, Exception):
                raise result
            limited += int(result)
    return limited


def count_live(host: Host, now: datetime) -> int:
    """How many session hashes of the prefix expire after ``now``."""
    live = 0
    threshold = micros(now)
    for names in scan(host):
        for value in host._each(names, "HGET", EXPIRES):
            # A key that vanished meanwhile reads None, a non-hash an error.
            with contextlib.suppress(TypeError, ValueError):
                if not isinstance(value, Exception) and whole(value) > threshold:
                    live += 1
    return live


def live_records(host: Host, now: datetime) -> t.Iterator[tuple[str, Record]]:
    """``(key, record)`` of every live session of the prefix; damaged ones are logged."""
    start = len(host.key_prefix.encode())
    for names in scan(host):
        for name, fields in zip(names, host._each(names, "HGETALL"), strict=True):
            try:
                key = name[start:].decode()
            except UnicodeDecodeError:
                logger.error("Skipping key %r: its name is not UTF-8.", name)
                continue
            if wrong_type(fields):
                logger.error("Skipping session %s: the key is not a hash.", key)
                continue
            if isinstance(fields, Exception):
                raise fields
            if not fields:
                continue
            try:
                record = decode(fields)
            except CorruptRecordError as e:
                logger.error("Skipping corrupt session %s: %s", key, e)
                continue
            if record.expires_at > now:
                yield key, record


def remove_all(host: Host) -> int:
    """Remove every key of the prefix, users' sets too; return how many sessions."""
    removed = 0
    users = (host.key_prefix + USERS).encode()
    for names in scan(host, sessions=False):
        # One DEL per key: a multi-key DEL fails across cluster slots.
        for name, result in zip(names, host._each(names, "DEL"), strict=True):
            if isinstance(result, Exception):
                raise result
            if not name.startswith(users):
                removed += int(result)
    return removed
