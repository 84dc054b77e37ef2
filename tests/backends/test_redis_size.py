"""The running total of a Redis session's size (the ``size`` and ``keys``
fields): kept by every save, recomputed once for hashes written without it
or with a damaged one, and the size limit holds with it as it did without."""

from __future__ import annotations

import hashlib
import itertools
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest
from flask import Flask
from hypothesis import given
from hypothesis import HealthCheck
from hypothesis import settings
from hypothesis import strategies as st

from flask_serversession.backends.base import data_size
from flask_serversession.backends.base import Delta
from flask_serversession.backends.base import Record
from flask_serversession.backends.redis import RedisBackend
from flask_serversession.errors import SessionTooLargeError

from ..conftest import session_cookie
from ..conftest import store_of
from ..test_races import add_parked_grow
from ..test_races import Parked

#: Every test of the module runs with redis-py and with valkey-py (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("redis_library")

HOUR = timedelta(hours=1)
_keys = itertools.count()


def now() -> datetime:
    return datetime.now(timezone.utc)


def fresh_key() -> str:
    return hashlib.sha256(f"size {next(_keys)}".encode()).hexdigest()


@pytest.fixture(params=["redis", "redis_cluster"])
def either_backend(request: pytest.FixtureRequest) -> RedisBackend:
    """An empty backend on the plain server, then on the cluster."""
    return t.cast(RedisBackend, request.getfixturevalue(f"{request.param}_backend"))


def totals(backend: RedisBackend, key: str) -> tuple[int | None, int | None]:
    """The stored ``size`` and ``keys`` of a session hash (None where absent)."""
    size, keys = backend.client.hmget(backend.key_prefix + key, ["size", "keys"])
    return (None if size is None else int(size)), (None if keys is None else int(keys))


def write_legacy(backend: RedisBackend, key: str, record: Record) -> None:
    """Write ``record`` as 0.2's create script laid it out: no ``size``, no ``keys``."""
    name = backend.key_prefix + key
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    created = (record.created_at - epoch) // timedelta(microseconds=1)
    expires = (record.expires_at - epoch) // timedelta(microseconds=1)
    fields = {"created_us": str(created), "expires_us": str(expires)}
    fields |= {"d:" + k: v for k, v in record.data.items()}
    backend.client.hset(name, mapping=fields)
    backend.client.pexpireat(name, expires // 1000 + 3_600_000)


def strip_totals(backend: RedisBackend, key: str) -> None:
    backend.client.hdel(backend.key_prefix + key, "size", "keys")


DATA = {"user": '"alice"', "ключ": '"значение ✓"', "🎉": '"\\ud83c\\udf89"', "n": "1"}


def test_create_stores_the_total(either_backend: RedisBackend) -> None:
    backend, key, start = either_backend, fresh_key(), now()
    backend.create(key, Record(DATA, start, start + HOUR))
    assert totals(backend, key) == (data_size(DATA), len(DATA))
    backend.create(key, Record({}, start, start + HOUR))
    assert totals(backend, key) == (0, 0)
    moved = fresh_key()
    assert backend.add(moved, Record(DATA, start, start + HOUR), start)
    assert totals(backend, moved) == (data_size(DATA), len(DATA))


def test_a_hash_written_without_the_total_is_loaded_saved_and_gets_one(
    either_backend: RedisBackend,
) -> None:
    backend, key, start = either_backend, fresh_key(), now()
    old = Record(DATA, start, start + HOUR)
    write_legacy(backend, key, old)
    assert totals(backend, key) == (None, None)
    assert backend.load(key) == old
    assert [k for k, _ in backend.items(now())] == [key]
    assert backend.count(now()) == 1

    delta = Delta(start + 2 * HOUR, {"n": "22", "new": '"é"'}, frozenset({"🎉"}), max_size=10**6)
    assert backend.update(key, delta, now())
    merged = {k: v for k, v in DATA.items() if k != "🎉"} | {"n": "22", "new": '"é"'}
    assert backend.load(key) == Record(merged, start, start + 2 * HOUR)
    assert totals(backend, key) == (data_size(merged), len(merged))


def test_the_limit_holds_on_a_hash_written_without_the_total(either_backend: RedisBackend) -> None:
    backend, key, start = either_backend, fresh_key(), now()
    write_legacy(backend, key, Record(DATA, start, start + HOUR))
    size = data_size(DATA)
    before = backend.client.dump(backend.key_prefix + key)
    grow = Delta(start + HOUR, {"grow": '"' + "x" * 20 + '"'}, max_size=size + 10)
    with pytest.raises(SessionTooLargeError, match=f"would take {size + 26} bytes"):
        backend.update(key, grow, now())
    assert backend.client.dump(backend.key_prefix + key) == before, "a refused save writes nothing"
    assert backend.update(key, Delta(start + HOUR, {"n": "2"}, max_size=size + 10), now())
    assert totals(backend, key) == (size, len(DATA))


def test_a_session_with_a_user_written_without_the_total(either_backend: RedisBackend) -> None:
    backend, key, start = either_backend, fresh_key(), now()
    backend.create(key, Record(DATA, start, start + HOUR, user="alice"))
    strip_totals(backend, key)
    assert backend.update(key, Delta(start + HOUR, {"n": "3"}, user="alice"), now())
    assert totals(backend, key) == (data_size(DATA), len(DATA))
    assert [k for k, _ in backend.user_records("alice", now())] == [key]


#: Ways to damage the stored total; each leaves the session itself readable.
TOTAL_DAMAGES: dict[str, t.Callable[[t.Any, str], object]] = {
    "size missing": lambda c, n: c.hdel(n, "size"),
    "keys missing": lambda c, n: c.hdel(n, "keys"),
    "size garbage": lambda c, n: c.hset(n, "size", "lots"),
    "size negative": lambda c, n: c.hset(n, "size", "-3"),
    "size float": lambda c, n: c.hset(n, "size", "1e3"),
    "size signed": lambda c, n: c.hset(n, "size", "+1"),
    "size huge": lambda c, n: c.hset(n, "size", "9" * 18),
    "size empty": lambda c, n: c.hset(n, "size", ""),
    "size not UTF-8": lambda c, n: c.hset(n, "size", b"\xff"),
    "keys garbage": lambda c, n: c.hset(n, "keys", "four"),
    "keys disagree": lambda c, n: c.hset(n, mapping={"size": "0", "keys": "9"}),
    "both zero": lambda c, n: c.hset(n, mapping={"size": "0", "keys": "0"}),
}


@pytest.mark.parametrize("damage", list(TOTAL_DAMAGES))
def test_a_damaged_total_is_recomputed_never_trusted(
    either_backend: RedisBackend, damage: str
) -> None:
    backend, key, start = either_backend, fresh_key(), now()
    backend.create(key, Record(DATA, start, start + HOUR))
    TOTAL_DAMAGES[damage](backend.client, backend.key_prefix + key)
    assert backend.load(key) == Record(DATA, start, start + HOUR), "the session still reads"

    size = data_size(DATA)
    grow = Delta(start + HOUR, {"grow": '"' + "x" * 20 + '"'}, max_size=size + 10)
    with pytest.raises(SessionTooLargeError, match=f"would take {size + 26} bytes"):
        backend.update(key, grow, now())
    fits = Delta(start + HOUR, {"n": "12345"}, max_size=size + 10)
    assert backend.update(key, fits, now())
    assert totals(backend, key) == (size + 4, len(DATA))


def test_the_total_follows_any_sequence_of_saves(either_backend: RedisBackend) -> None:
    backend = either_backend
    names = st.sampled_from(["a", "ключ", "🎉 x", "", "d:x", "size", "keys", "\x00", "user"])
    values = st.text(max_size=12)
    steps = st.lists(
        st.tuples(
            st.dictionaries(names, values, max_size=4),
            st.frozensets(names, max_size=3),
            st.sampled_from([None, 10**6]),
        ),
        min_size=1,
        max_size=6,
    )

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(start=st.dictionaries(names, values, max_size=5), steps=steps, legacy=st.booleans())
    def check(
        start: dict[str, str],
        steps: list[tuple[dict[str, str], frozenset[str], int | None]],
        legacy: bool,
    ) -> None:
        key, begun = fresh_key(), now()
        created = Record(start, begun, begun + HOUR)
        if legacy:
            write_legacy(backend, key, created)
        else:
            backend.create(key, created)
        data = dict(start)
        for sets, deletes, limit in steps:
            deleted = deletes - sets.keys()
            assert backend.update(key, Delta(begun + HOUR, sets, deleted, max_size=limit), now())
            data = {k: v for k, v in data.items() if k not in deleted} | sets
            loaded = backend.load(key)
            assert loaded is not None and loaded.data == data
            assert totals(backend, key) == (data_size(data), len(data))
        backend.delete(key)

    check()


@pytest.mark.parametrize("legacy", [False, True], ids=["with total", "without total"])
def test_two_saves_from_one_load_cannot_pass_the_limit_together(
    either_backend: RedisBackend, legacy: bool
) -> None:
    backend, key, start = either_backend, fresh_key(), now()
    base = {"user": '"alice"'}
    limit = data_size(base) + 60
    if legacy:
        write_legacy(backend, key, Record(base, start, start + HOUR))
    else:
        backend.create(key, Record(base, start, start + HOUR))
    # Both writers loaded the same session; each change fits the limit alone.
    note = '"' + "n" * 40 + '"'
    deltas = [Delta(start + HOUR, {f"note{n}": note}, max_size=limit) for n in (1, 2)]
    assert all(data_size(base | d.set) <= limit for d in deltas)
    assert backend.update(key, deltas[0], now())
    with pytest.raises(SessionTooLargeError):
        backend.update(key, deltas[1], now())
    loaded = backend.load(key)
    assert loaded is not None and loaded.data == base | deltas[0].set
    assert totals(backend, key) == (data_size(loaded.data), 2)


def test_a_request_parked_over_a_save_of_an_old_hash_cannot_pass_the_limit(
    make_app: t.Callable[..., Flask], redis_backend: RedisBackend
) -> None:
    backend = redis_backend
    app = make_app(backend, SERVERSESSION_MAX_SIZE=1000)
    add_parked_grow(app)
    client = app.test_client()
    client.post("/set", json={"user": "alice"})
    token = session_cookie(client)
    assert token is not None
    store = store_of(app)
    with app.app_context():
        key = store.storage_key(t.cast(str, store.sid_from(token)))
    strip_totals(backend, key)
    # The parked request has loaded the session; the other one saves first,
    # on the hash without a total, and stores one.
    with Parked(app, token, "/parked/grow") as grow:
        assert client.post("/set", json={"b": "y" * 600}).status_code == 200
        assert totals(backend, key)[0] is not None
    assert isinstance(grow.error, SessionTooLargeError)
    loaded = backend.load(key)
    assert loaded is not None and data_size(loaded.data) <= 1000
    assert totals(backend, key) == (data_size(loaded.data), 2)
    assert client.get("/dump").json == {"user": "alice", "b": "y" * 600}


@pytest.mark.parametrize("n", [499, 500, 501, 1200])
def test_the_total_of_saves_written_in_several_commands(
    redis_backend: RedisBackend, n: int
) -> None:
    backend, key, start = redis_backend, fresh_key(), now()
    created = {f"old{i}": "ü" * (i % 3) for i in range(n)}
    backend.create(key, Record(created, start, start + HOUR))
    assert totals(backend, key) == (data_size(created), n)
    sets = {f"new{i}": str(i) for i in range(n + 1)} | {"old0": "changed"}
    deleted = frozenset(f"old{i}" for i in range(1, n, 2))
    assert backend.update(key, Delta(start + HOUR, sets, deleted, max_size=10**7), now())
    data = {k: v for k, v in created.items() if k not in deleted} | sets
    assert backend.load(key) == Record(data, start, start + HOUR)
    assert totals(backend, key) == (data_size(data), len(data))


@pytest.mark.parametrize("legacy", [False, True], ids=["with total", "without total"])
def test_rewrite_keeps_the_total(either_backend: RedisBackend, legacy: bool) -> None:
    backend, key, start = either_backend, fresh_key(), now()
    stored = Record(DATA, start, start + HOUR)
    if legacy:
        write_legacy(backend, key, stored)
    else:
        backend.create(key, stored)
    sealed = {k: "sealed " + v for k, v in DATA.items()}
    delta = Delta(start + HOUR, sealed, max_size=10**6)
    assert backend.rewrite(key, stored, delta, now())
    assert totals(backend, key) == (data_size(sealed), len(sealed))
    assert backend.rewrite(key, stored, delta, now()) is False, "it holds something else now"
    assert totals(backend, key) == (data_size(sealed), len(sealed))


def script_commands(backend: RedisBackend, call: t.Callable[[], object]) -> dict[str, int]:
    """The commands the server ran for ``call`` (scripts' own included), by name."""

    def calls() -> dict[str, int]:
        stats = backend.client.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    before = calls()
    call()
    after = calls()
    ran = {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}
    ran.pop("info", None)
    return ran


def test_a_save_reads_only_the_fields_it_changes(redis_backend: RedisBackend) -> None:
    backend, key, start = redis_backend, fresh_key(), now()
    data = {f"key{i}": '"' + "v" * i + '"' for i in range(50)}
    backend.create(key, Record(data, start, start + HOUR))

    def save(sets: dict[str, str]) -> None:
        assert backend.update(key, Delta(start + HOUR, sets, max_size=10**6), now())

    ran = script_commands(backend, lambda: save({"key7": "1"}))
    assert ran.get("hstrlen") == 1 and "hkeys" not in ran, ran
    ran = script_commands(backend, lambda: save({"new": "1"}))  # absent: HEXISTS tells
    assert ran.get("hstrlen") == 1 and ran.get("hexists") == 1 and "hkeys" not in ran, ran

    strip_totals(backend, key)  # as 0.2 wrote it: read whole, once
    ran = script_commands(backend, lambda: save({"key8": "2"}))
    assert ran.get("hkeys") == 1 and ran.get("hstrlen") == 51, ran
    ran = script_commands(backend, lambda: save({"key9": "3"}))
    assert ran.get("hstrlen") == 1 and "hkeys" not in ran, ran
