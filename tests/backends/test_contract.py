"""The contract every backend passes: run it against your own with a ``x_backend`` fixture."""

from __future__ import annotations

import hashlib
import threading
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest
from flask import Flask
from flask import session

from flask_serversession.backends.base import Backend
from flask_serversession.backends.base import Delta
from flask_serversession.backends.base import Record

from ..conftest import NATIVE_EXPIRY
from ..conftest import session_cookie
from ..conftest import store_of

NOW = datetime.now(timezone.utc).replace(microsecond=0)
HOUR = timedelta(hours=1)


def key_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def record(data: dict[str, str], *, expires_in: timedelta = HOUR) -> Record:
    return Record(data, NOW, NOW + expires_in)


def test_load_unknown_key_is_none(backend: Backend) -> None:
    assert backend.load(key_of("nobody")) is None


def test_create_then_load_round_trips(backend: Backend) -> None:
    data = {"user": '"alice"', "cart": "[1,2,3]", "ünï cødé": '"✓ ☃"'}
    backend.create(key_of("a"), record(data))
    loaded = backend.load(key_of("a"))
    assert loaded is not None
    assert loaded.data == data
    assert loaded.created_at == NOW
    assert loaded.expires_at == NOW + HOUR
    assert loaded.expires_at.tzinfo is not None
    assert loaded.expires_at.utcoffset() == timedelta(0)


def test_keys_that_look_like_syntax_are_plain_keys(backend: Backend) -> None:
    data = {k: f'"{i}"' for i, k in enumerate(["a.b", "$x", 'q"uote', "d:meta", "sp ace", "[0]"])}
    backend.create(key_of("a"), record(data))
    assert backend.update(key_of("a"), Delta(NOW + HOUR, {"a.b": '"new"'}, frozenset({"$x"})), NOW)
    loaded = backend.load(key_of("a"))
    assert loaded is not None
    assert loaded.data == {**{k: v for k, v in data.items() if k != "$x"}, "a.b": '"new"'}


def test_large_value_round_trips(backend: Backend) -> None:
    big = '"' + "x" * 300_000 + '"'
    backend.create(key_of("a"), record({"big": big}))
    loaded = backend.load(key_of("a"))
    assert loaded is not None and loaded.data["big"] == big


def test_create_replaces_existing_record(backend: Backend) -> None:
    backend.create(key_of("a"), record({"old": "1", "both": "1"}))
    backend.create(key_of("a"), record({"both": "2"}, expires_in=2 * HOUR))
    loaded = backend.load(key_of("a"))
    assert loaded is not None
    assert loaded.data == {"both": "2"}
    assert loaded.expires_at == NOW + 2 * HOUR


def test_update_applies_only_the_delta(backend: Backend) -> None:
    backend.create(key_of("a"), record({"keep": "1", "change": "1", "drop": "1"}))
    delta = Delta(NOW + 2 * HOUR, {"change": "2", "add": "3"}, frozenset({"drop", "absent"}))
    assert backend.update(key_of("a"), delta, NOW) is True
    loaded = backend.load(key_of("a"))
    assert loaded is not None
    assert loaded.data == {"keep": "1", "change": "2", "add": "3"}
    assert loaded.expires_at == NOW + 2 * HOUR
    assert loaded.created_at == NOW


def test_update_with_expect_is_a_compare_and_set(backend: Backend) -> None:
    # What a rotation writes with (0.3): the delta lands only on the state it was made from.
    backend.create(key_of("a"), record({"state": '"one"', "k": "1"}))
    stale = Delta(NOW + 2 * HOUR, {"state": '"two"', "k": "2"}, expect=("state", '"zero"'))
    assert backend.update(key_of("a"), stale, NOW) is False
    absent = Delta(NOW + 2 * HOUR, {"k": "2"}, expect=("state", None))
    assert backend.update(key_of("a"), absent, NOW) is False
    loaded = backend.load(key_of("a"))
    assert loaded is not None and loaded.data == {"state": '"one"', "k": "1"}
    assert loaded.expires_at == NOW + HOUR
    current = Delta(NOW + 2 * HOUR, {"state": '"two"'}, frozenset({"k"}), expect=("state", '"one"'))
    assert backend.update(key_of("a"), current, NOW) is True
    loaded = backend.load(key_of("a"))
    assert loaded is not None and loaded.data == {"state": '"two"'}
    assert loaded.expires_at == NOW + 2 * HOUR
    backend.create(key_of("b"), record({"k": "1"}))
    first = Delta(NOW + HOUR, {"state": '"one"'}, expect=("state", None))
    assert backend.update(key_of("b"), first, NOW) is True
    assert backend.update(key_of("gone"), first, NOW) is False


def test_update_of_missing_record_creates_nothing(backend: Backend) -> None:
    assert backend.update(key_of("gone"), Delta(NOW + HOUR, {"k": "1"}), NOW) is False
    assert backend.load(key_of("gone")) is None
    assert backend.count(NOW) == 0


def test_update_never_revives_an_expired_record(backend: Backend) -> None:
    backend.create(key_of("a"), record({"k": "1"}, expires_in=-HOUR))
    assert backend.update(key_of("a"), Delta(NOW + HOUR, {"k": "2"}), NOW) is False
    assert backend.touch(key_of("a"), NOW + HOUR, NOW) is False
    loaded = backend.load(key_of("a"))
    assert loaded is None or (loaded.expires_at <= NOW and loaded.data == {"k": "1"})


def test_touch_moves_expiry_and_keeps_data(backend: Backend) -> None:
    backend.create(key_of("a"), record({"k": "1"}))
    assert backend.touch(key_of("a"), NOW + 5 * HOUR, NOW) is True
    loaded = backend.load(key_of("a"))
    assert loaded is not None
    assert loaded.expires_at == NOW + 5 * HOUR
    assert loaded.data == {"k": "1"}
    assert backend.touch(key_of("missing"), NOW + HOUR, NOW) is False
    assert backend.load(key_of("missing")) is None


def test_delete(backend: Backend) -> None:
    backend.create(key_of("a"), record({"k": "1"}))
    backend.create(key_of("b"), record({"k": "2"}))
    backend.delete(key_of("a"))
    backend.delete(key_of("never existed"))
    assert backend.load(key_of("a")) is None
    assert backend.load(key_of("b")) is not None


def test_count_items_and_purge_see_only_live_records(backend: Backend, backend_name: str) -> None:
    for i in range(5):
        backend.create(key_of(f"live{i}"), record({"i": str(i)}))
    for i in range(3):
        backend.create(key_of(f"dead{i}"), record({"i": str(i)}, expires_in=-HOUR))
    assert backend.count(NOW) == 5
    items = dict(backend.items(NOW))
    assert set(items) == {key_of(f"live{i}") for i in range(5)}
    assert items[key_of("live3")].data == {"i": "3"}

    removed = backend.purge_expired(NOW)
    assert removed == (0 if backend_name in NATIVE_EXPIRY else 3)
    assert backend.count(NOW) == 5
    assert all(backend.load(key_of(f"dead{i}")) is None for i in range(3))
    assert backend.load(key_of("live0")) is not None


def test_clear_removes_everything(backend: Backend) -> None:
    for i in range(4):
        backend.create(key_of(f"s{i}"), record({"i": str(i)}))
    assert backend.clear() == 4
    assert backend.count(NOW) == 0
    assert list(backend.items(NOW)) == []


def test_concurrent_updates_of_different_keys_all_survive(backend: Backend) -> None:
    key = key_of("shared")
    backend.create(key, record({}))
    threads, rounds = 6, 25

    def writer(n: int) -> None:
        for i in range(rounds):
            assert backend.update(key, Delta(NOW + HOUR, {f"t{n}": str(i)}), NOW)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    loaded = backend.load(key)
    assert loaded is not None
    assert loaded.data == {f"t{n}": str(rounds - 1) for n in range(threads)}


def test_requests_round_trip_through_the_app(backend_app: Flask) -> None:
    client = backend_app.test_client()
    client.post("/set", json={"user": "alice", "cart": []})
    client.post("/append/cart", json={"sku": "tea"})
    client.post("/delete/user")
    assert client.get("/dump").json == {"cart": [{"sku": "tea"}]}
    with backend_app.app_context():
        assert store_of(backend_app).count() == 1


def test_regenerate_and_destroy_through_the_app(backend_app: Flask) -> None:
    client = backend_app.test_client()
    client.post("/set", json={"user": "alice"})
    old = session_cookie(client)
    client.post("/regenerate")
    new = session_cookie(client)
    assert new and new != old
    assert client.get("/get/user").json == {"value": "alice"}
    client.post("/destroy")
    assert session_cookie(client) is None
    with backend_app.app_context():
        assert store_of(backend_app).count() == 0


def test_concurrent_requests_writing_own_keys_lose_nothing(backend_app: Flask) -> None:
    first = backend_app.test_client()
    first.post("/set", json={"start": True})
    token = session_cookie(first)
    assert token is not None
    threads, rounds = 6, 15
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        client = backend_app.test_client()
        client.set_cookie("session", token)
        try:
            for i in range(rounds):
                assert client.post("/set", json={f"t{n}": i}).status_code == 200
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors
    final = first.get("/dump").json
    assert final == {"start": True, **{f"t{n}": rounds - 1 for n in range(threads)}}


def test_in_flight_request_does_not_revive_a_destroyed_session(backend_app: Flask) -> None:
    loaded, destroyed = threading.Event(), threading.Event()

    @backend_app.post("/slow-write")
    def slow_write() -> str:
        session.get("user")
        loaded.set()
        assert destroyed.wait(10)
        session["late"] = "write"
        return "written"

    client = backend_app.test_client()
    client.post("/set", json={"user": "alice"})
    token = session_cookie(client)
    slow = backend_app.test_client()
    slow.set_cookie("session", t.cast(str, token))
    result: list[int] = []
    writer = threading.Thread(target=lambda: result.append(slow.post("/slow-write").status_code))
    writer.start()
    assert loaded.wait(10)
    client.post("/destroy")
    destroyed.set()
    writer.join()
    assert result == [200]
    with backend_app.app_context():
        assert store_of(backend_app).count() == 0
    stale = backend_app.test_client()
    stale.set_cookie("session", t.cast(str, token))
    assert stale.get("/dump").json == {}


# The user index (SERVERSESSION_USER_KEY): Record.user, Delta.user, user_records.


def user_record(
    user: str | None, data: dict[str, str] | None = None, *, expires_in: timedelta = HOUR
) -> Record:
    data = {"_user_id": f'"{user}"'} if data is None else data
    return Record(data, NOW, NOW + expires_in, user=user)


def needs_user_index(backend: Backend) -> None:
    from ..support.users import needs_user_index

    needs_user_index(backend)


def listed(backend: Backend, user: str, now: datetime = NOW) -> set[str]:
    return {key for key, _record in backend.user_records(user, now)}


def test_user_index_lists_a_users_live_records(backend: Backend) -> None:
    needs_user_index(backend)
    backend.create(key_of("a1"), user_record("alice", {"cart": "[1]"}))
    backend.create(key_of("a2"), user_record("alice"))
    backend.create(key_of("b1"), user_record("bob"))
    backend.create(key_of("anonymous"), record({"cart": "[]"}))
    records = dict(backend.user_records("alice", NOW))
    assert set(records) == {key_of("a1"), key_of("a2")}
    assert records[key_of("a1")].data == {"cart": "[1]"}
    assert records[key_of("a1")].created_at == NOW
    assert records[key_of("a1")].expires_at == NOW + HOUR
    assert listed(backend, "bob") == {key_of("b1")}
    assert listed(backend, "carol") == set()


def test_user_index_follows_a_delta_that_changes_the_user(backend: Backend) -> None:
    needs_user_index(backend)
    key = key_of("a")
    backend.create(key, user_record("alice"))
    to_bob = Delta(NOW + HOUR, {"_user_id": '"bob"'}, user="bob", user_changed=True)
    assert backend.update(key, to_bob, NOW)
    assert (listed(backend, "alice"), listed(backend, "bob")) == (set(), {key})

    assert backend.update(key, Delta(NOW + HOUR, {"cart": "[2]"}), NOW)
    assert backend.touch(key, NOW + 2 * HOUR, NOW)
    ((_key, still_bobs),) = backend.user_records("bob", NOW)
    assert still_bobs.data == {"_user_id": '"bob"', "cart": "[2]"}

    signed_out = Delta(NOW + HOUR, deleted=frozenset({"_user_id"}), user=None, user_changed=True)
    assert backend.update(key, signed_out, NOW)
    assert (listed(backend, "alice"), listed(backend, "bob")) == (set(), set())

    back = Delta(NOW + HOUR, {"_user_id": '"alice"'}, user="alice", user_changed=True)
    assert backend.update(key, back, NOW)
    assert listed(backend, "alice") == {key}


def test_user_index_follows_a_create_over_a_record(backend: Backend) -> None:
    needs_user_index(backend)
    key = key_of("a")
    backend.create(key, user_record("alice"))
    backend.create(key, user_record("bob"))
    assert (listed(backend, "alice"), listed(backend, "bob")) == (set(), {key})
    backend.create(key, record({"cart": "[]"}))
    assert listed(backend, "bob") == set()


def test_removed_records_are_not_listed(backend: Backend) -> None:
    needs_user_index(backend)
    for name in ("deleted", "taken", "kept"):
        backend.create(key_of(name), user_record("alice"))
    backend.create(key_of("expired"), user_record("alice", expires_in=-HOUR))
    backend.delete(key_of("deleted"))
    assert backend.take(key_of("taken"), NOW) is not None
    backend.purge_expired(NOW)
    # Two hours ago the expired record was live: only its removal keeps it out.
    assert listed(backend, "alice", NOW - 2 * HOUR) == {key_of("kept")}
    backend.clear()
    assert listed(backend, "alice", NOW - 2 * HOUR) == set()


def test_expired_records_are_not_listed(backend: Backend) -> None:
    needs_user_index(backend)
    backend.create(key_of("live"), user_record("alice"))
    backend.create(key_of("expired"), user_record("alice", expires_in=-HOUR))
    assert listed(backend, "alice") == {key_of("live")}
    assert listed(backend, "alice", NOW + 2 * HOUR) == set()


def test_users_never_see_each_others_records(backend: Backend) -> None:
    needs_user_index(backend)
    users = ["alice", "alic", "alice2", "1", "11", "a:b", "a*", "[a]", "ünï cødé", "x/../y", "%s"]
    for user in users:
        for n in range(2):
            backend.create(key_of(f"{user}-{n}"), user_record(user))
    for user in users:
        assert listed(backend, user) == {key_of(f"{user}-0"), key_of(f"{user}-1")}, user


def test_a_thousand_sessions_of_one_user_are_listed(backend: Backend) -> None:
    needs_user_index(backend)
    keys = [key_of(f"many-{n}") for n in range(1000)]
    for key in keys:
        backend.create(key, user_record("alice"))
    backend.create(key_of("bob's"), user_record("bob"))
    records = backend.user_records("alice", NOW)
    assert len(records) == 1000
    assert {key for key, _record in records} == set(keys)
    for key in keys[::2]:
        backend.delete(key)
    assert listed(backend, "alice") == set(keys[1::2])


# Backend.add: stores a record only where no live one is (moving between stores).


def needs_add(backend: Backend) -> None:
    """Skip for a backend without add: only a store that sessions move into needs it."""
    if type(backend).add is Backend.add:
        pytest.skip(f"{type(backend).__name__} has no add (SERVERSESSION_MIGRATE_FROM only)")


def test_add_stores_only_where_no_live_record_is(backend: Backend) -> None:
    needs_add(backend)
    key = key_of("a")
    assert backend.add(key, record({"n": "1"}), NOW) is True
    loaded = backend.load(key)
    assert loaded is not None and loaded.data == {"n": "1"}
    assert loaded.expires_at == NOW + HOUR

    assert backend.add(key, record({"n": "2"}, expires_in=2 * HOUR), NOW) is False
    loaded = backend.load(key)
    assert loaded is not None and loaded.data == {"n": "1"}, "a live record is left alone"
    assert loaded.expires_at == NOW + HOUR

    backend.create(key_of("b"), record({"n": "old"}, expires_in=-HOUR))
    assert backend.add(key_of("b"), record({"n": "new"}), NOW) is True
    loaded = backend.load(key_of("b"))
    assert loaded is not None and loaded.data == {"n": "new"}, "an expired record is replaced"
    assert backend.count(NOW) == 2


def test_concurrent_adds_of_one_key_store_exactly_one(backend: Backend) -> None:
    needs_add(backend)
    key, threads = key_of("raced"), 6
    start = threading.Barrier(threads, timeout=30)
    won: list[int] = []

    def add(n: int) -> None:
        start.wait()
        if backend.add(key, record({"n": str(n)}), NOW):
            won.append(n)

    workers = [threading.Thread(target=add, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    assert len(won) == 1
    loaded = backend.load(key)
    assert loaded is not None and loaded.data == {"n": str(won[0])}


def test_user_index_follows_an_add(backend: Backend) -> None:
    needs_add(backend)
    needs_user_index(backend)
    key, earlier = key_of("a"), NOW - 2 * HOUR
    assert backend.add(key, user_record("alice"), NOW)
    assert listed(backend, "alice") == {key}
    assert not backend.add(key, user_record("bob"), NOW)
    assert (listed(backend, "alice"), listed(backend, "bob")) == ({key}, set())

    ended = key_of("ended")
    backend.create(ended, user_record("alice", expires_in=-timedelta(minutes=1)))
    assert backend.add(ended, user_record("bob"), NOW)
    assert listed(backend, "alice", earlier) == {key}, "the expired record left alice's index"
    assert listed(backend, "bob") == {ended}
    assert backend.add(key_of("anonymous"), record({"cart": "[]"}), NOW)
    assert listed(backend, "alice") == {key}


def test_rewrite_applies_only_while_the_record_is_as_read(backend: Backend) -> None:
    if type(backend).rewrite is Backend.rewrite:
        import pytest

        # Optional: only ``flask serversession reencrypt`` needs it.
        pytest.skip(f"{type(backend).__name__} does not rewrite (no rewrite)")
    key = key_of("rewrite")
    backend.create(key, record({"a": '"1"', "b": '"2"'}))
    read = backend.load(key)
    assert read is not None
    # Another save lands after the read: the rewrite writes nothing.
    assert backend.update(key, Delta(read.expires_at, {"b": '"3"'}), NOW)
    assert not backend.rewrite(key, read, Delta(read.expires_at, {"a": '"x"'}), NOW)
    again = backend.load(key)
    assert again is not None and again.data == {"a": '"1"', "b": '"3"'}
    # A renewal alone changes the record too.
    later = again.expires_at + HOUR
    assert backend.update(key, Delta(later), NOW)
    assert not backend.rewrite(key, again, Delta(again.expires_at, {"a": '"x"'}), NOW)
    current = backend.load(key)
    assert current is not None and current.expires_at == later
    assert backend.rewrite(key, current, Delta(current.expires_at, {"a": '"x"'}), NOW)
    final = backend.load(key)
    assert final is not None and final.data == {"a": '"x"', "b": '"3"'}
    assert final.expires_at == later
    backend.delete(key)
    assert not backend.rewrite(key, final, Delta(final.expires_at, {"a": '"y"'}), NOW)
    assert backend.load(key) is None
