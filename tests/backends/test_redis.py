from __future__ import annotations

import hashlib
import logging
import threading
import time
import typing as t
from datetime import datetime
from datetime import timedelta
from datetime import timezone

import pytest
import redis
import redis.asyncio
import redis.cluster
import valkey
import valkey.asyncio
from flask import Flask

from flask_serversession.backend_config import build_backend
from flask_serversession.backends.base import CorruptRecordError
from flask_serversession.backends.base import data_size
from flask_serversession.backends.base import Delta
from flask_serversession.backends.base import Record
from flask_serversession.backends.redis import RedisBackend
from flask_serversession.backends.redis import scripts
from flask_serversession.config import DEFAULTS
from flask_serversession.errors import BackendError
from flask_serversession.errors import ConfigError
from flask_serversession.errors import SessionTooLargeError

from ..conftest import session_cookie
from ..conftest import store_of
from ..support.redis_servers import client_library
from ..support.redis_servers import cluster_class
from ..support.redis_servers import Counter
from ..support.redis_servers import DAMAGES
from ..support.redis_servers import free_port
from ..support.redis_servers import LAYOUT_DAMAGES
from ..support.redis_servers import node_client
from ..support.redis_servers import redis_decoded_backend  # noqa: F401
from ..support.redis_servers import RedisCluster
from ..support.redis_servers import RedisSentinel
from ..support.redis_servers import RedisServer
from ..support.redis_servers import unique_prefix

#: Every test of the module runs with redis-py and with valkey-py (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("redis_library")

HOUR = timedelta(hours=1)


def now() -> datetime:
    return datetime.now(timezone.utc)


def key_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def record(data: dict[str, str] | None = None, *, expires_in: timedelta = HOUR) -> Record:
    start = now()
    return Record({"k": '"v"'} if data is None else data, start, start + expires_in)


def pttl(backend: RedisBackend, key: str) -> int:
    return int(backend.client.pttl(backend.key_prefix + key))


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}


def server_commands(client: redis.Redis, call: t.Callable[[], object]) -> dict[str, int]:
    """Commands the server ran for ``call``, from ``INFO commandstats`` deltas."""
    before = command_calls(client)
    call()
    after = command_calls(client)
    diff = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    diff.pop("info", None)
    return diff


def session_operations(
    backend: RedisBackend, key: str, start: datetime
) -> dict[str, t.Callable[[], object]]:
    return {
        "load": lambda: backend.load(key),
        "create": lambda: backend.create(key, record({"a": "1", "b": "2"})),
        "update": lambda: backend.update(key, Delta(start + 2 * HOUR, {"c": "3"}), start),
        "touch": lambda: backend.touch(key, start + 3 * HOUR, start),
        "take": lambda: backend.take(key, start),
        "delete": lambda: backend.delete(key),
    }


def test_each_operation_is_one_round_trip(redis_server: RedisServer) -> None:
    counter = Counter()
    pool = client_library().ConnectionPool(
        connection_class=counter.connection_class(), host="127.0.0.1", port=redis_server.port
    )
    client = client_library().Redis(connection_pool=pool)
    admin = redis_server.client()
    backend = RedisBackend(client, key_prefix=unique_prefix())
    key, start = key_of("a"), now()
    client.ping()
    backend.update(key_of("warm up"), Delta(start + HOUR), start)  # loads the scripts
    backend.create(key_of("warm up"), record())

    operations = session_operations(backend, key, start)
    backend.take(key_of("warm up"), start)  # loads the script
    for name in ("create", "load", "update", "touch", "take", "create", "delete"):
        n, sent = counter.measure(operations[name])
        assert n == 1, name
        if name in ("create", "update", "touch", "take"):
            assert b"EVALSHA" in sent[0]

    # What the server ran for each: one command or one script.
    assert server_commands(admin, lambda: backend.load(key)) == {"hgetall": 1}
    created = server_commands(admin, lambda: backend.create(key, record()))
    assert created["evalsha"] == 1 and "script|load" not in created and "eval" not in created
    updated = server_commands(admin, lambda: backend.update(key, Delta(start + HOUR), start))
    assert updated["evalsha"] == 1 and "script|load" not in updated and "eval" not in updated
    taken = server_commands(admin, lambda: backend.take(key, start))
    assert taken["evalsha"] == 1 and "script|load" not in taken and "eval" not in taken
    backend.clear()
    client.close()
    admin.close()


def test_script_is_reloaded_after_the_server_forgets_it(redis_backend: RedisBackend) -> None:
    backend, key = redis_backend, key_of("a")
    backend.create(key, record())
    backend.client.script_flush()
    assert backend.update(key, Delta(now() + 2 * HOUR, {"x": "1"}), now())
    assert backend.load(key).data == {"k": '"v"', "x": "1"}  # type: ignore[union-attr]
    backend.client.script_flush()
    assert backend.take(key, now()).data == {"k": '"v"', "x": "1"}  # type: ignore[union-attr]


def test_cluster_operations_are_one_round_trip(redis_cluster: RedisCluster) -> None:
    counter = Counter()
    client = redis_cluster.client()
    counter.count_cluster(client)
    backend = RedisBackend(client, key_prefix=unique_prefix())
    start = now()
    keys = [key_of(f"s{i}") for i in range(6)]
    for key in keys:  # opens a connection to every node and loads the scripts there
        backend.create(key, record())
        backend.update(key, Delta(start + HOUR), start)
        backend.take(key, start)
    for key in keys:
        for name, call in session_operations(backend, key, start).items():
            assert counter.measure(call)[0] == 1, name
    backend.clear()
    client.close()


def test_create_sets_the_ttl_and_update_and_touch_move_it(redis_backend: RedisBackend) -> None:
    backend, key = redis_backend, key_of("a")
    start = now()
    backend.create(key, Record({"k": "1"}, start, start + HOUR))
    # Each time an hour past the expiry: keep_expired's default.
    assert 7_190_000 < pttl(backend, key) <= 7_200_001
    assert backend.update(key, Delta(start + 2 * HOUR, {"k": "2"}), start)
    assert 10_790_000 < pttl(backend, key) <= 10_800_001
    assert backend.touch(key, start + 3 * HOUR, start)
    assert 14_390_000 < pttl(backend, key) <= 14_400_001
    loaded = backend.load(key)
    assert loaded is not None and loaded.expires_at == start + 3 * HOUR


def test_redis_drops_the_hash_keep_expired_after_it_expires(redis_backend: RedisBackend) -> None:
    backend = RedisBackend(
        redis_backend.client,
        key_prefix=redis_backend.key_prefix,
        keep_expired=timedelta(milliseconds=300),
    )
    key = key_of("a")
    backend.create(key, record(expires_in=timedelta(milliseconds=150)))
    assert backend.load(key) is not None
    time.sleep(0.2)
    # Expired, and still there for a request to meet (session_expired).
    expired = backend.load(key)
    assert expired is not None and expired.expires_at <= now()
    assert backend.update(key, Delta(now() + HOUR, {"k": "2"}), now()) is False
    assert backend.touch(key, now() + HOUR, now()) is False
    assert backend.count(now()) == 0 and list(backend.items(now())) == []
    assert backend.take(key, now()) is None
    backend.create(key, record(expires_in=timedelta(milliseconds=150)))
    time.sleep(0.6)
    assert backend.load(key) is None
    assert backend.client.exists(backend.key_prefix + key) == 0


@pytest.mark.parametrize("bad", [timedelta(seconds=-1), 60, None])
def test_keep_expired_is_a_timedelta(redis_backend: RedisBackend, bad: t.Any) -> None:
    with pytest.raises(ValueError, match="keep_expired"):
        RedisBackend(redis_backend.client, keep_expired=bad)


def test_update_checks_the_stored_expiry_against_now(redis_backend: RedisBackend) -> None:
    # The app's clock says the session is over before Redis has dropped it.
    backend, key = redis_backend, key_of("a")
    created = record({"k": "1"})
    backend.create(key, created)
    later = created.expires_at + timedelta(seconds=1)
    assert backend.update(key, Delta(later + HOUR, {"k": "2"}), later) is False
    assert backend.touch(key, later + HOUR, later) is False
    assert backend.load(key) == created
    assert backend.count(later) == 0
    assert list(backend.items(later)) == []
    assert backend.count(now()) == 1


def test_update_of_a_session_deleted_meanwhile_does_not_recreate_it(
    redis_backend: RedisBackend,
) -> None:
    backend, key = redis_backend, key_of("a")
    backend.create(key, record())
    assert backend.load(key) is not None
    backend.client.delete(backend.key_prefix + key)  # another request destroyed it
    assert backend.update(key, Delta(now() + HOUR, {"late": "1"}), now()) is False
    assert backend.touch(key, now() + HOUR, now()) is False
    assert backend.client.exists(backend.key_prefix + key) == 0


def test_hash_layout(redis_backend: RedisBackend) -> None:
    backend, key = redis_backend, key_of("a")
    start = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    backend.create(key, Record({"user": '"alice"', "d:x": "1"}, start, start + HOUR))
    fields = backend.client.hgetall(backend.key_prefix + key)
    assert fields == {
        b"d:user": b'"alice"',
        b"d:d:x": b"1",
        b"created_us": str(int(start.timestamp()) * 10**6 + 678901).encode(),
        b"expires_us": str(int((start + HOUR).timestamp()) * 10**6 + 678901).encode(),
        # data_size of the data (4 + 7, 3 + 1 bytes) and its number of keys
        b"size": b"15",
        b"keys": b"2",
    }
    assert backend.client.type(backend.key_prefix + key) == b"hash"
    # Redis drops it keep_expired (an hour) after the millisecond after
    # expires_at, never before.
    expire_ms = int(backend.client.pexpiretime(backend.key_prefix + key))
    assert expire_ms == int((start + 2 * HOUR).timestamp()) * 1000 + 679


def test_corrupt_hashes_raise_on_load_and_are_skipped_by_items(
    redis_backend: RedisBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend, client, prefix = redis_backend, redis_backend.client, redis_backend.key_prefix
    backend.create(key_of("good"), record({"k": "1"}))
    client.hset(prefix + key_of("no meta"), mapping={"d:k": "1"})
    client.hset(prefix + key_of("garbage"), mapping={"created_us": "x", "expires_us": "y"})
    client.hset(
        prefix + key_of("stray field"),
        mapping={"created_us": 1, "expires_us": 2**52, "stray": "1"},
    )
    client.hset(
        prefix + key_of("bad utf8"),
        mapping={"created_us": 1, "expires_us": 2**52, "d:k": b"\xff\xfe"},
    )
    client.set(prefix + key_of("string"), "not a hash")
    for name in ("no meta", "garbage", "stray field", "bad utf8", "string"):
        with pytest.raises(CorruptRecordError):
            backend.load(key_of(name))

    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        items = dict(backend.items(now()))
    assert list(items) == [key_of("good")]
    assert len([r for r in caplog.records if r.name == "flask_serversession"]) == 5
    assert backend.count(now()) == 3  # count reads only the expiry: "stray field", "bad utf8"
    assert backend.clear() == 6


def test_prefixes_isolate_backends_on_one_server(redis_server: RedisServer) -> None:
    client = redis_server.client()
    base = unique_prefix()
    first = RedisBackend(client, key_prefix=base + "one:")
    second = RedisBackend(client, key_prefix=base + "two:")
    client.set(base + "unrelated", "x")
    for i in range(3):
        first.create(key_of(f"s{i}"), record())
    second.create(key_of("s0"), record({"other": "1"}))

    assert first.count(now()) == 3 and second.count(now()) == 1
    assert {k for k, _ in first.items(now())} == {key_of(f"s{i}") for i in range(3)}
    assert [r.data for _, r in second.items(now())] == [{"other": "1"}]
    assert first.clear() == 3
    assert second.count(now()) == 1
    assert second.load(key_of("s0")) is not None
    assert client.get(base + "unrelated") == b"x"
    assert second.clear() == 1
    client.delete(base + "unrelated")
    client.close()


@pytest.mark.parametrize("special", ["*", "?", "[ab]", "\\", "[", "]", "x*y?\\[z]"])
def test_glob_characters_in_the_prefix_are_literal(redis_server: RedisServer, special: str) -> None:
    client = redis_server.client()
    base = unique_prefix()
    globby = RedisBackend(client, key_prefix=f"{base}{special}:")
    plain = RedisBackend(client, key_prefix=f"{base}a:")
    plain.create(key_of("plain"), record())
    globby.create(key_of("globby"), record())
    assert globby.count(now()) == 1
    assert [k for k, _ in globby.items(now())] == [key_of("globby")]
    assert globby.clear() == 1
    assert plain.count(now()) == 1
    assert plain.clear() == 1
    client.close()


def test_scan_handles_many_sessions(redis_backend: RedisBackend) -> None:
    pipe = redis_backend.client.pipeline(transaction=False)
    start = now()
    for i in range(1234):
        name = redis_backend.key_prefix + key_of(f"s{i}")
        pipe.hset(name, mapping={"created_us": 1, "expires_us": 2**52, "d:i": str(i)})
    pipe.execute()
    assert redis_backend.count(start) == 1234
    assert len(dict(redis_backend.items(start))) == 1234
    assert redis_backend.clear() == 1234
    assert redis_backend.count(start) == 0


def test_a_session_and_a_delta_with_many_fields(redis_backend: RedisBackend) -> None:
    backend, key = redis_backend, key_of("a")
    created = record({f"old{i}": "1" for i in range(5000)})
    backend.create(key, created)
    assert backend.load(key) == created
    delta = Delta(
        now() + HOUR,
        {f"new{i}": str(i) for i in range(10_000)},
        frozenset(f"old{i}" for i in range(5000)),
    )
    assert backend.update(key, delta, now())
    loaded = backend.load(key)
    assert loaded is not None and loaded.data == delta.set


def test_client_with_decode_responses(redis_server: RedisServer) -> None:
    client = redis_server.client(decode_responses=True)
    backend = RedisBackend(client, key_prefix=unique_prefix())
    created = record({"ü": '"✓"'})
    backend.create(key_of("a"), created)
    assert backend.load(key_of("a")) == created
    assert backend.update(key_of("a"), Delta(created.expires_at, {"b": "1"}), now())
    assert dict(backend.items(now()))[key_of("a")].data == {"ü": '"✓"', "b": "1"}
    assert backend.count(now()) == 1
    assert backend.clear() == 1
    client.close()


def test_cluster_spreads_sessions_over_every_primary(redis_cluster_backend: RedisBackend) -> None:
    backend = redis_cluster_backend
    client = t.cast(redis.cluster.RedisCluster, backend.client)
    keys = [key_of(f"s{i}") for i in range(60)]
    for i, key in enumerate(keys):
        backend.create(key, record({"i": str(i)}))

    primaries = client.get_primaries()  # type: ignore[no-untyped-call]
    assert len(primaries) == 3
    match = backend.key_prefix + "*"
    per_node = [len(list(node_client(node).scan_iter(match=match))) for node in primaries]
    assert sum(per_node) == 60 and all(n > 0 for n in per_node)

    assert backend.count(now()) == 60
    items = dict(backend.items(now()))
    assert set(items) == set(keys) and items[keys[7]].data == {"i": "7"}
    assert backend.clear() == 60
    assert backend.count(now()) == 0


def test_cluster_update_is_atomic_and_never_recreates(redis_cluster_backend: RedisBackend) -> None:
    backend, key = redis_cluster_backend, key_of("shared")
    backend.create(key, record({}))
    expires = now() + HOUR

    def writer(n: int) -> None:
        for i in range(20):
            assert backend.update(key, Delta(expires, {f"t{n}": str(i)}), now())

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    loaded = backend.load(key)
    assert loaded is not None and loaded.data == {f"t{n}": "19" for n in range(4)}

    backend.delete(key)
    assert backend.update(key, Delta(expires, {"late": "1"}), now()) is False
    assert backend.load(key) is None


def test_sentinel_client_end_to_end(redis_sentinel: RedisSentinel) -> None:
    client = redis_sentinel.client()
    assert isinstance(client, client_library().Redis)
    backend = RedisBackend(client, key_prefix=unique_prefix())
    key = key_of("a")
    backend.create(key, record({"k": "1"}))
    assert backend.update(key, Delta(now() + 2 * HOUR, {"j": "2"}), now())
    assert backend.touch(key, now() + 3 * HOUR, now())
    assert backend.load(key).data == {"k": "1", "j": "2"}  # type: ignore[union-attr]
    assert backend.count(now()) == 1
    primary = redis_sentinel.primary.client()
    assert primary.exists(backend.key_prefix + key) == 1
    assert backend.clear() == 1
    client.close()
    primary.close()


def make_config_app(**config: t.Any) -> Flask:
    app = Flask("tests")
    app.config.update(DEFAULTS)
    app.config.update(SERVERSESSION_BACKEND="redis", **config)
    return app


@pytest.mark.parametrize(
    "client",
    [
        object(),
        "redis://localhost",
        redis.ConnectionPool(),
        redis.asyncio.Redis(),
        valkey.ConnectionPool(),
        valkey.asyncio.Valkey(),
    ],
    ids=["object", "str", "pool", "asyncio", "valkey-pool", "valkey-asyncio"],
)
def test_a_non_client_is_refused(client: t.Any) -> None:
    accepted = (
        r"redis\.Redis, redis\.cluster\.RedisCluster, valkey\.Valkey,"
        r" valkey\.cluster\.ValkeyCluster or Sentinel master_for\(\) client"
    )
    with pytest.raises(TypeError, match=accepted):
        RedisBackend(client)
    with pytest.raises(ConfigError, match="SERVERSESSION_REDIS"):
        build_backend(make_config_app(SERVERSESSION_REDIS=client))


def test_an_empty_prefix_is_refused(redis_server: RedisServer) -> None:
    with pytest.raises(ValueError, match="key_prefix"):
        RedisBackend(redis_server.client(), key_prefix="")


@pytest.mark.parametrize(
    "url",
    [
        "localhost:6379",
        "http://localhost:6379/0",
        "redis://",
        "redis:///0",
        "redis://localhost:port/0",
        "redis://localhost:99999/0",
        "redis://localhost:6379/zero",
        "unix://",
        "",
        "valkey://",
        "valkeys://localhost:port/0",
        "valkey://localhost:6379/zero",
    ],
)
def test_a_bad_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        RedisBackend.from_url(url)
    with pytest.raises(ConfigError, match="SERVERSESSION_REDIS_URL"):
        build_backend(make_config_app(SERVERSESSION_REDIS_URL=url))


def test_from_url_and_config_build_a_backend_without_contacting_the_server(
    redis_library: str,
) -> None:
    port = free_port()
    url = f"{redis_library}://127.0.0.1:{port}/3?socket_timeout=1.5"
    backend = RedisBackend.from_url(url, key_prefix="app:")
    assert isinstance(backend.client, client_library().Redis)
    kwargs = t.cast(redis.Redis, backend.client).connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", port, 3)
    assert kwargs["socket_timeout"] == 1.5 and kwargs["socket_connect_timeout"] == 3.0
    assert backend.key_prefix == "app:"
    backend.close()

    app = make_config_app(SERVERSESSION_REDIS_URL=url, SERVERSESSION_KEY_PREFIX="other:")
    built = build_backend(app)
    assert isinstance(built, RedisBackend) and built.key_prefix == "other:"
    built.close()


def test_config_passes_a_ready_client(redis_server: RedisServer) -> None:
    client = redis_server.client()
    backend = build_backend(make_config_app(SERVERSESSION_REDIS=client))
    assert isinstance(backend, RedisBackend) and backend.client is client
    assert backend.key_prefix == "serversession:"
    backend.close()
    assert client.ping()  # a client given by the app stays open
    client.close()


def test_a_closed_port_fails_fast_with_backend_error(redis_library: str) -> None:
    backend = RedisBackend.from_url(f"{redis_library}://127.0.0.1:{free_port()}/0")
    start = time.monotonic()
    with pytest.raises(BackendError, match="Redis failed to load a session: ConnectionError") as e:
        backend.load(key_of("a"))
    assert time.monotonic() - start < 2
    assert isinstance(e.value.__cause__, client_library().exceptions.ConnectionError)
    assert e.value.code == 503
    backend.close()


OPERATIONS: dict[str, t.Callable[[RedisBackend], object]] = {
    "load": lambda b: b.load(key_of("a")),
    "create": lambda b: b.create(key_of("a"), record()),
    "update": lambda b: b.update(key_of("a"), Delta(now() + HOUR, {"k": "1"}), now()),
    "touch": lambda b: b.touch(key_of("a"), now() + HOUR, now()),
    "take": lambda b: b.take(key_of("a"), now()),
    "delete": lambda b: b.delete(key_of("a")),
    "purge": lambda b: b.purge_expired(now(), longest_lifetime=HOUR),
    "count": lambda b: b.count(now()),
    "items": lambda b: list(b.items(now())),
    "clear": lambda b: b.clear(),
}


def test_a_killed_server_raises_backend_error_until_it_is_back(
    make_redis_server: t.Callable[..., RedisServer],
) -> None:
    server = make_redis_server()
    backend = RedisBackend.from_url(server.url)
    backend.create(key_of("a"), record())
    assert backend.load(key_of("a")) is not None

    server.kill()
    for name, operation in OPERATIONS.items():
        with pytest.raises(BackendError, match="Redis failed to") as e:
            operation(backend)
        assert isinstance(e.value.__cause__, client_library().exceptions.ConnectionError), name

    server.start()  # same port, empty: nothing was persisted
    assert backend.load(key_of("a")) is None
    backend.create(key_of("a"), record({"back": "1"}))
    assert backend.update(key_of("a"), Delta(now() + HOUR, {"again": "2"}), now())
    assert backend.load(key_of("a")).data == {"back": "1", "again": "2"}  # type: ignore[union-attr]
    assert backend.count(now()) == 1
    backend.close()


def test_a_read_only_replica_refuses_writes_with_backend_error(
    make_redis_server: t.Callable[..., RedisServer],
) -> None:
    primary = make_redis_server("--repl-diskless-sync-delay", "0")
    replica = make_redis_server("--replicaof", "127.0.0.1", str(primary.port))
    on_primary = RedisBackend.from_url(primary.url)
    on_replica = RedisBackend.from_url(replica.url)
    on_primary.create(key_of("a"), record({"k": "1"}))
    deadline = time.monotonic() + 10
    while on_replica.load(key_of("a")) is None:
        assert time.monotonic() < deadline, "the replica never synced"
        time.sleep(0.05)

    with pytest.raises(BackendError, match=r"ReadOnlyError|READONLY"):
        on_replica.create(key_of("b"), record())
    with pytest.raises(BackendError, match=r"ReadOnlyError.*read only replica"):
        on_replica.update(key_of("a"), Delta(now() + HOUR, {"k": "2"}), now())
    with pytest.raises(BackendError, match=r"ReadOnlyError|READONLY"):
        on_replica.delete(key_of("a"))
    with pytest.raises(BackendError, match=r"ReadOnlyError|READONLY"):
        on_replica.take(key_of("a"), now())
    with pytest.raises(BackendError, match=r"ReadOnlyError|READONLY"):
        on_replica.clear()
    assert on_replica.load(key_of("b")) is None
    assert on_replica.load(key_of("a")).data == {"k": "1"}  # type: ignore[union-attr]
    on_primary.close()
    on_replica.close()


def test_a_failed_save_leaves_no_half_written_hash(
    make_redis_server: t.Callable[..., RedisServer],
) -> None:
    server = make_redis_server()
    backend = RedisBackend.from_url(server.url)
    name = backend.key_prefix + key_of("a")
    backend.create(key_of("a"), record({"k": "1", "gone": "1"}))
    before = backend.client.hgetall(name)
    backend.client.config_set("maxmemory", 1)  # writes that may grow memory are refused

    with pytest.raises(BackendError, match=r"OutOfMemoryError|OOM"):
        backend.create(key_of("b"), record({"k": "1"}))
    assert backend.client.exists(backend.key_prefix + key_of("b")) == 0
    with pytest.raises(BackendError, match=r"OutOfMemoryError|OOM"):
        backend.update(key_of("a"), Delta(now() + 2 * HOUR, {"k": "2", "new": "3"}), now())
    assert backend.client.hgetall(name) == before

    # Redis lets a script that has begun writing finish, so a delta that starts
    # with a deletion is applied whole even now; never in part.
    delta = Delta(now() + 2 * HOUR, {"k": "2", "new": "3"}, frozenset({"gone"}))
    assert backend.update(key_of("a"), delta, now())
    assert backend.load(key_of("a")).data == {"k": "2", "new": "3"}  # type: ignore[union-attr]
    backend.client.config_set("maxmemory", 0)
    backend.close()


@pytest.fixture(params=["redis", "redis_cluster"])
def either_backend(request: pytest.FixtureRequest) -> RedisBackend:
    """An empty backend on the plain server, then on the cluster."""
    return t.cast(RedisBackend, request.getfixturevalue(f"{request.param}_backend"))


@pytest.fixture(params=["redis", "redis_cluster", "redis_decoded"])
def any_backend(request: pytest.FixtureRequest) -> RedisBackend:
    """As ``either_backend``, and on a plain client built with decode_responses."""
    return t.cast(RedisBackend, request.getfixturevalue(f"{request.param}_backend"))


def raw(backend: RedisBackend, key: str) -> bytes | None:
    """The server's serialization of the key (DUMP), to tell that nothing changed."""
    return t.cast("bytes | None", backend.client.dump(backend.key_prefix + key))


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "flask_serversession" and r.levelno >= logging.ERROR
    ]


def test_take_returns_the_live_record_and_removes_it(either_backend: RedisBackend) -> None:
    backend, key = either_backend, key_of("a")
    created = record({"user": '"alice"', "cart": "[1,2]"})
    backend.create(key, created)
    assert backend.take(key, now()) == created
    assert backend.client.exists(backend.key_prefix + key) == 0
    assert backend.take(key, now()) is None
    # A save of the old session that lands after the take brings nothing back.
    assert backend.update(key, Delta(now() + HOUR, {"late": "1"}), now()) is False
    assert backend.touch(key, now() + HOUR, now()) is False
    assert backend.load(key) is None


def test_take_of_a_session_expired_by_the_app_clock_removes_it(
    either_backend: RedisBackend,
) -> None:
    backend, key = either_backend, key_of("a")
    created = record({"k": "1"})
    backend.create(key, created)
    assert backend.take(key, created.expires_at + timedelta(seconds=1)) is None
    assert backend.client.exists(backend.key_prefix + key) == 0
    assert backend.take(key_of("never existed"), now()) is None


def at_once(*calls: t.Callable[[], object]) -> list[object]:
    """Run ``calls`` in threads released together; each one's result or exception."""
    barrier = threading.Barrier(len(calls), timeout=10)
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
        assert not thread.is_alive()
    return results


def test_only_one_of_two_concurrent_takes_gets_the_session(either_backend: RedisBackend) -> None:
    backend, key = either_backend, key_of("a")
    for _ in range(10):
        created = record({"k": "1"})
        backend.create(key, created)
        taken = at_once(lambda: backend.take(key, now()), lambda: backend.take(key, now()))
        assert sorted(taken, key=lambda r: r is None) == [created, None]


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_key_fails_load_and_update_and_take_removes_it(
    any_backend: RedisBackend, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend, key = any_backend, key_of("a")
    backend.create(key, record({"user": '"alice"'}))
    DAMAGES[damage](backend.client, backend.key_prefix + key)

    with pytest.raises(CorruptRecordError):
        backend.load(key)
    if damage in LAYOUT_DAMAGES:
        before = raw(backend, key)
        assert backend.update(key, Delta(now() + HOUR, {"k": "2"}, max_size=10**6), now()) is False
        assert backend.update(key, Delta(now() + HOUR, {"k": "2"}), now()) is False
        assert backend.touch(key, now() + 2 * HOUR, now()) is False
        assert raw(backend, key) == before
    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        assert list(backend.items(now())) == []
        assert backend.take(key, now()) is None
    assert len(errors_logged(caplog)) == 2
    assert backend.client.exists(backend.key_prefix + key) == 0
    assert backend.load(key) is None


def test_damaged_keys_next_to_good_ones(
    any_backend: RedisBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend = any_backend
    backend.create(key_of("good"), record({"k": "1"}))
    for damage, apply in DAMAGES.items():
        backend.create(key_of(damage), record({"user": '"alice"'}))
        apply(backend.client, backend.key_prefix + key_of(damage))
    backend.client.set(backend.key_prefix.encode() + b"\xff\xfe", "a key name that is not UTF-8")
    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        assert [k for k, _ in backend.items(now())] == [key_of("good")]
    assert len(errors_logged(caplog)) == len(DAMAGES) + 1
    assert backend.clear() == len(DAMAGES) + 2


def test_update_enforces_max_size_on_the_merged_data(either_backend: RedisBackend) -> None:
    backend, key = either_backend, key_of("a")
    backend.create(key, record({"a": '"' + "x" * 40 + '"'}))
    size = data_size({"a": '"' + "x" * 40 + '"'})  # 43
    before = raw(backend, key)
    grow = Delta(now() + 2 * HOUR, {"b": '"' + "y" * 20 + '"'}, max_size=50)
    with pytest.raises(SessionTooLargeError, match=rf"would take {size + 23} bytes.*\(50\)"):
        backend.update(key, grow, now())
    assert raw(backend, key) == before
    assert 3_600_000 < pttl(backend, key) <= 7_200_001  # the expiry did not move either

    assert backend.update(key, replace_max(grow, None), now())  # no limit
    # Over the limit already: a save that does not grow it still goes through.
    assert backend.update(key, Delta(now() + HOUR, {"b": '"' + "z" * 20 + '"'}, max_size=50), now())
    shrink = Delta(now() + HOUR, {"a": '"x"'}, max_size=50)
    assert backend.update(key, shrink, now())
    assert backend.update(key, Delta(now() + HOUR, deleted=frozenset({"b"}), max_size=1), now())
    loaded = backend.load(key)
    assert loaded is not None and loaded.data == {"a": '"x"'}


def replace_max(delta: Delta, max_size: int | None) -> Delta:
    return Delta(delta.expires_at, delta.set, delta.deleted, max_size=max_size)


UNICODE_DATA = {
    "ключ": '"значение"',
    "🎉 party": '"\\ud83c\\udf89"',
    "a\x00b": '"nul \x00 inside"',
    "\x00": '"\\u0000"',
    "\ufeff\uffff": '"☃ ✓ 中文"',
    "d:x": '"looks like a field"',
    "": '""',
    "created_us": '"a session key named like metadata"',
}


def test_the_script_counts_bytes_exactly_as_data_size(either_backend: RedisBackend) -> None:
    backend, key = either_backend, key_of("a")
    delta_set = {"ü🎉": '"' + "✓" * 7 + '"', "ключ": '"короче"', "\x00k": '"\x00"'}
    deleted = frozenset({"a\x00b", "absent"})
    merged = {k: v for k, v in UNICODE_DATA.items() if k not in deleted} | delta_set
    size = data_size(merged)
    assert size > data_size(UNICODE_DATA)
    for limit, fits in ((size - 1, False), (size, True)):
        backend.create(key, record(UNICODE_DATA))
        delta = Delta(now() + HOUR, delta_set, deleted, max_size=limit)
        if fits:
            assert backend.update(key, delta, now())
            assert backend.load(key).data == merged  # type: ignore[union-attr]
        else:
            with pytest.raises(SessionTooLargeError, match=f"would take {size} bytes"):
                backend.update(key, delta, now())
            assert backend.load(key).data == UNICODE_DATA  # type: ignore[union-attr]


def test_two_writers_that_fit_alone_cannot_pass_max_size_together(
    either_backend: RedisBackend,
) -> None:
    backend, key = either_backend, key_of("a")
    base = {"user": '"alice"'}
    limit = data_size(base) + 60
    for round_ in range(5):
        backend.create(key, record(base))
        # Each writer loaded the same session; its own change fits the limit.
        deltas = [
            Delta(now() + HOUR, {f"note{n}": '"' + "n" * 40 + '"'}, max_size=limit) for n in (1, 2)
        ]
        assert all(data_size(base | d.set) <= limit for d in deltas)
        outcomes = at_once(*(lambda d=d: backend.update(key, d, now()) for d in deltas))
        assert True in outcomes, round_
        assert [type(o) for o in outcomes if o is not True] == [SessionTooLargeError], round_
        loaded = backend.load(key)
        assert loaded is not None and data_size(loaded.data) <= limit
        assert len(loaded.data) == 2


def test_unicode_and_nul_round_trip_in_keys_and_values(any_backend: RedisBackend) -> None:
    backend, key = any_backend, key_of("a")
    created = record(UNICODE_DATA)
    backend.create(key, created)
    assert backend.load(key) == created
    delta = Delta(
        created.expires_at,
        {"🎉 party": '"again"', "новый\x00": '"\x00\x00"', "\U0010fffd": '"\U0001f600"'},
        frozenset({"ключ", "\x00"}),
        max_size=10**6,
    )
    assert backend.update(key, delta, now())
    expected = {k: v for k, v in UNICODE_DATA.items() if k not in delta.deleted} | delta.set
    assert backend.load(key).data == expected  # type: ignore[union-attr]
    assert dict(backend.items(now()))[key].data == expected
    assert backend.take(key, now()).data == expected  # type: ignore[union-attr]


def test_unicode_and_nul_round_trip_through_requests(
    make_app: t.Callable[..., Flask], either_backend: RedisBackend
) -> None:
    client = make_app(either_backend).test_client()
    values = {
        "ключ 🎉": "a\x00b ☃",
        "\ufeffbom": ["\x00", "\U0010fffd", {"中文": "\x00"}],
        "d:user": "looks like a field",
        "created_us": 1,
    }
    assert client.post("/set", json=values).status_code == 200
    assert client.get("/dump").json == values
    assert client.post("/set", json={"ключ 🎉": "\x00 changed"}).status_code == 200
    assert client.post("/delete/created_us").status_code == 200
    expected = {k: v for k, v in values.items() if k != "created_us"} | {"ключ 🎉": "\x00 changed"}
    assert client.get("/dump").json == expected
    assert session_cookie(client) is not None


def no_ttl_keys(backend: RedisBackend) -> dict[str, t.Callable[[], object]]:
    """Keys under the prefix without a TTL, as damage or other code leaves them."""
    client, prefix = backend.client, backend.key_prefix

    def persisted(name: str, damage: str | None) -> t.Callable[[], object]:
        def make() -> None:
            backend.create(key_of(name), record({"k": "1"}))
            if damage is not None:
                DAMAGES[damage](client, prefix + key_of(name))
            client.persist(prefix + key_of(name))

        return make

    return {
        "persisted session": persisted("persisted session", None),
        "no metadata": persisted("no metadata", "metadata missing"),
        "stray field": persisted("stray field", "stray field"),
        "string": lambda: client.set(prefix + key_of("string"), "x"),
        "list": lambda: client.rpush(prefix + key_of("list"), "x"),
        "set": lambda: client.sadd(prefix + key_of("set"), "x"),
    }


def test_purge_gives_keys_without_a_ttl_one_and_leaves_sessions_alone(
    either_backend: RedisBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend, client, prefix = either_backend, either_backend.client, either_backend.key_prefix
    sessions = {key_of(f"s{i}"): record({"i": str(i)}, expires_in=(i + 1) * HOUR) for i in range(5)}
    for key, created in sessions.items():
        backend.create(key, created)
    backend.create(key_of("damaged with ttl"), record({"k": "1"}))
    DAMAGES["stray field"](client, prefix + key_of("damaged with ttl"))
    lasting = no_ttl_keys(backend)
    for make in lasting.values():
        make()
    expiry = {name: client.pexpiretime(name) for name in client.keys(_glob(prefix))}
    assert all(pttl(backend, key_of(n)) == -1 for n in lasting)

    assert backend.purge_expired(now(), longest_lifetime=None) == 0
    assert all(pttl(backend, key_of(n)) == -1 for n in lasting)

    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        assert backend.purge_expired(now(), longest_lifetime=2 * HOUR) == 0
    assert [r.getMessage() for r in errors_logged(caplog)] == [
        f"6 keys under {prefix!r} had no TTL (damaged, or not written by this backend);"
        " Redis removes them in 2:00:00."
    ]
    for name in lasting:
        assert 7_190_000 < pttl(backend, key_of(name)) <= 7_200_000, name
    for name, expire_ms in expiry.items():
        if expire_ms != -1:
            assert client.pexpiretime(name) == expire_ms
    for key, created in sessions.items():
        assert backend.load(key) == created

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        assert backend.purge_expired(now(), longest_lifetime=timedelta(seconds=1)) == 0
    assert errors_logged(caplog) == []  # a key given a TTL once keeps it
    assert 7_100_000 < pttl(backend, key_of("string")) <= 7_200_000


def _glob(prefix: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"


def test_keys_given_a_ttl_by_purge_are_gone_after_it(either_backend: RedisBackend) -> None:
    backend = either_backend
    backend.create(key_of("good"), record())
    lasting = no_ttl_keys(backend)
    for make in lasting.values():
        make()
    assert backend.purge_expired(now(), longest_lifetime=timedelta(milliseconds=100)) == 0
    deadline = time.monotonic() + 5
    while any(backend.client.exists(backend.key_prefix + key_of(n)) for n in lasting):
        assert time.monotonic() < deadline, "Redis did not drop the keys"
        time.sleep(0.05)
    assert [k for k, _ in backend.items(now())] == [key_of("good")]


def test_purge_works_in_batches_over_every_primary(either_backend: RedisBackend) -> None:
    backend, client, prefix = either_backend, either_backend.client, either_backend.key_prefix
    pipe = client.pipeline(transaction=False)
    for i in range(1300):
        name = prefix + key_of(f"k{i}")
        if i % 2:
            pipe.hset(name, mapping={"created_us": 1, "expires_us": 2**52, "d:i": str(i)})
        else:
            pipe.set(name, "damaged")
        if i % 3 == 0:
            pipe.pexpire(name, 3_600_000)
    pipe.execute()
    assert backend.purge_expired(now(), longest_lifetime=2 * HOUR) == 0
    ttls = [pttl(backend, key_of(f"k{i}")) for i in range(1300)]
    assert all(3_500_000 < ms <= 3_600_000 for ms in ttls[::3])
    assert all(7_100_000 < ms <= 7_200_000 for i, ms in enumerate(ttls) if i % 3)
    if isinstance(client, cluster_class()):
        primaries = client.get_primaries()  # type: ignore[no-untyped-call]
        for node in primaries:
            connection = node_client(node)
            names = list(connection.scan_iter(match=_glob(prefix)))
            assert names and all(connection.pttl(n) > 0 for n in names)
    assert backend.clear() == 1300


# The user index.


def of_user(
    user: str | None, data: dict[str, str] | None = None, *, expires_in: timedelta = HOUR
) -> Record:
    start = now()
    return Record({"k": '"v"'} if data is None else data, start, start + expires_in, user=user)


def user_set(backend: RedisBackend, user: str) -> str:
    return backend.key_prefix + "user:" + hashlib.sha256(user.encode()).hexdigest()


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def members(backend: RedisBackend, user: str) -> set[str]:
    return {_str(m) for m in backend.client.smembers(user_set(backend, user))}


def listed(backend: RedisBackend, user: str, at: datetime | None = None) -> dict[str, Record]:
    found = backend.user_records(user, now() if at is None else at)
    assert len(found) == len(dict(found))
    return dict(found)


def signed(user: str | None) -> Delta:
    return Delta(now() + HOUR, {"_user_id": f'"{user}"'}, user=user, user_changed=True)


def assert_indexed(backend: RedisBackend) -> None:
    """Every session with a user is in that user's set, and the set outlives it."""
    client, prefix = backend.client, backend.key_prefix
    for name in map(_str, client.scan_iter(match=_glob(prefix))):
        if name.startswith(prefix + "user:") or _str(client.type(name)) != "hash":
            continue
        user = client.hget(name, "user")
        if user is None:
            continue
        index = user_set(backend, _str(user))
        assert client.sismember(index, name[len(prefix) :]), name
        assert int(client.pexpiretime(index)) >= int(client.pexpiretime(name)), name
        assert int(client.hget(name, "indexed_us")) // 1000 <= int(client.pexpiretime(index))


def test_sessions_are_listed_by_user(any_backend: RedisBackend) -> None:
    backend = any_backend
    alice = {key_of(f"alice{i}"): of_user("alice", {"i": str(i)}) for i in range(3)}
    for key, created in alice.items():
        backend.create(key, created)
    backend.create(key_of("bob"), of_user("bob"))
    backend.create(key_of("anonymous"), of_user(None))
    odd = "ünï:cødé 🎉 *?[x]"
    backend.create(key_of("odd"), of_user(odd, {"ü": '"✓"'}))
    assert_indexed(backend)

    assert listed(backend, "alice") == alice
    bob = listed(backend, "bob")
    assert list(bob) == [key_of("bob")] and bob[key_of("bob")].user == "bob"
    assert listed(backend, "nobody") == {}
    assert backend.load(key_of("alice1")) == alice[key_of("alice1")]
    assert backend.load(key_of("anonymous")).user is None  # type: ignore[union-attr]
    assert listed(backend, odd)[key_of("odd")].data == {"ü": '"✓"'}
    assert listed(backend, "") == {}
    assert {r.user for _, r in backend.items(now())} == {"alice", "bob", odd, None}
    assert backend.count(now()) == 6


def test_a_user_set_is_named_by_a_digest_and_outlives_its_sessions(
    either_backend: RedisBackend,
) -> None:
    backend, client = either_backend, either_backend.client
    user = "alice@example.org"
    backend.create(key_of("a"), of_user(user, expires_in=2 * HOUR))
    names = [n.decode() for n in client.scan_iter(match=_glob(backend.key_prefix))]
    assert sorted(names) == sorted([backend.key_prefix + key_of("a"), user_set(backend, user)])
    assert not any("alice" in n for n in names)
    assert client.type(user_set(backend, user)) == b"set"
    fields = client.hgetall(backend.key_prefix + key_of("a"))
    assert fields[b"user"] == user.encode()

    # A day past the session's expiry, and never shortened by a shorter session.
    day = 24 * 3_600_000
    first = int(client.pttl(user_set(backend, user)))
    # PEXPIREAT rounds to the millisecond: allow one either side.
    assert 2 * 3_600_000 + day - 10_000 < first <= 2 * 3_600_000 + day + 1
    assert int(fields[b"indexed_us"]) // 1000 >= int(client.pexpiretime(user_set(backend, user)))
    backend.create(key_of("b"), of_user(user, expires_in=timedelta(minutes=5)))
    assert int(client.pttl(user_set(backend, user))) > first - 10_000
    # A long session: as long again as it has left.
    backend.create(key_of("c"), of_user(user, expires_in=timedelta(days=3)))
    assert int(client.pttl(user_set(backend, user))) > 6 * day - 10_000


def test_a_change_of_user_moves_the_session(either_backend: RedisBackend) -> None:
    backend, key = either_backend, key_of("a")
    backend.create(key, of_user(None))
    assert backend.update(key, signed("alice"), now())
    assert set(listed(backend, "alice")) == {key}
    assert members(backend, "alice") == {key}

    assert backend.update(key, signed("bob"), now())
    assert_indexed(backend)
    assert listed(backend, "alice") == {} and members(backend, "alice") == set()
    moved = listed(backend, "bob")[key]
    assert moved.user == "bob" and moved.data == {"k": '"v"', "_user_id": '"bob"'}

    assert backend.update(key, signed(None), now())
    assert listed(backend, "bob") == {} and members(backend, "bob") == set()
    fields = backend.client.hgetall(backend.key_prefix + key)
    assert b"user" not in fields and b"indexed_us" not in fields
    assert backend.load(key).user is None  # type: ignore[union-attr]

    # A save that does not change hands keeps the user, and a touch too.
    assert backend.update(key, signed("carol"), now())
    assert backend.update(key, Delta(now() + 2 * HOUR, {"x": "1"}, user="carol"), now())
    assert backend.touch(key, now() + 3 * HOUR, now())
    assert listed(backend, "carol")[key].data == {"k": '"v"', "_user_id": '"carol"', "x": "1"}
    assert_indexed(backend)
    assert backend.update(key_of("gone"), signed("carol"), now()) is False
    assert set(listed(backend, "carol")) == {key}


def test_delete_take_expiry_and_clear_end_listing(either_backend: RedisBackend) -> None:
    backend = either_backend
    for name in ("deleted", "taken", "short", "later", "kept"):
        backend.create(key_of(name), of_user("alice"))
    backend.create(key_of("short"), of_user("alice", expires_in=timedelta(milliseconds=150)))
    backend.delete(key_of("deleted"))
    taken = backend.take(key_of("taken"), now())
    assert taken is not None and taken.user == "alice"
    assert key_of("taken") not in members(backend, "alice")  # take knows the user
    time.sleep(0.3)

    live = listed(backend, "alice")
    assert set(live) == {key_of("later"), key_of("kept")}
    assert members(backend, "alice") == {key_of("later"), key_of("kept")}
    # Expired by the app's clock before Redis drops it: not listed, not indexed.
    assert listed(backend, "alice", max(r.expires_at for r in live.values())) == {}
    assert members(backend, "alice") == set()

    backend.create(key_of("kept"), of_user("alice"))
    # "short" expired, but Redis keeps its hash for keep_expired, as SQL keeps
    # a row until it is purged: clear counts it.
    assert backend.clear() == 3
    assert backend.client.exists(user_set(backend, "alice")) == 0
    assert listed(backend, "alice") == {}


def test_a_stale_member_is_never_listed_and_is_removed(either_backend: RedisBackend) -> None:
    backend, client = either_backend, either_backend.client
    backend.create(key_of("real"), of_user("alice"))
    # A crash between the index write and the session's own write leaves this.
    client.sadd(user_set(backend, "alice"), key_of("ghost"), b"\xff not a key")
    assert set(listed(backend, "alice")) == {key_of("real")}
    assert members(backend, "alice") == {key_of("real")}


def test_another_users_session_is_never_listed(
    either_backend: RedisBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend, client = either_backend, either_backend.client
    backend.create(key_of("alice"), of_user("alice"))
    backend.create(key_of("bob"), of_user("bob"))
    backend.create(key_of("anonymous"), of_user(None))
    backend.create(key_of("damaged"), of_user("alice"))
    client.hset(backend.key_prefix + key_of("damaged"), "stray", "1")
    client.sadd(user_set(backend, "alice"), key_of("bob"), key_of("anonymous"))
    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        assert set(listed(backend, "alice")) == {key_of("alice")}
    assert len(errors_logged(caplog)) == 1
    assert members(backend, "alice") == {key_of("alice")}
    assert set(listed(backend, "bob")) == {key_of("bob")}


def test_a_late_removal_keeps_a_session_that_came_back(either_backend: RedisBackend) -> None:
    # A request moved the session from alice to bob, another moved it back,
    # and the first request's removal from alice's set lands last.
    backend, key = either_backend, key_of("a")
    backend.create(key, of_user("alice"))
    assert backend.update(key, signed("bob"), now())
    assert backend.update(key, signed("alice"), now())
    backend._users.forget("alice", key, moved=True)
    assert set(listed(backend, "alice")) == {key}
    assert members(backend, "alice") == {key}


def test_a_cluster_listing_between_index_and_write_loses_nothing(
    redis_cluster_backend: RedisBackend,
) -> None:
    # On a cluster the set and the hash are written one after the other. A
    # listing that reads the hash and cleans the set while a sign-in is
    # between the two must not leave the session out of its user's set.
    backend, key = redis_cluster_backend, key_of("a")
    backend.create(key, of_user(None))
    indexed, listed_meanwhile = threading.Event(), threading.Event()
    add = backend._users.add

    def parked_add(user: str, member: str, deadline_ms: int) -> None:
        add(user, member, deadline_ms)
        if not indexed.is_set():
            indexed.set()
            assert listed_meanwhile.wait(10)

    backend._users.add = parked_add  # type: ignore[method-assign]
    writer = threading.Thread(target=lambda: backend.update(key, signed("alice"), now()))
    writer.start()
    assert indexed.wait(10)
    assert members(backend, "alice") == {key}
    assert listed(backend, "alice") == {}  # not alice's yet: the member is removed
    listed_meanwhile.set()
    writer.join(10)
    assert not writer.is_alive()
    assert set(listed(backend, "alice")) == {key}
    assert members(backend, "alice") == {key}


def test_a_renewal_past_the_sets_ttl_moves_it_first(either_backend: RedisBackend) -> None:
    backend, client, key = either_backend, either_backend.client, key_of("a")
    start = now()
    backend.create(key, of_user("alice"))
    indexed = int(client.hget(backend.key_prefix + key, "indexed_us"))
    later = start + timedelta(days=3)
    assert backend.touch(key, later, start)
    assert_indexed(backend)
    assert int(client.hget(backend.key_prefix + key, "indexed_us")) > indexed
    much_later = start + timedelta(days=30)
    assert backend.update(key, Delta(much_later, {"x": "1"}, user="alice"), start)
    assert_indexed(backend)
    set_expiry_ms = int(client.pexpiretime(user_set(backend, "alice")))
    assert set_expiry_ms >= int(much_later.timestamp() * 1000) + 24 * 3_600_000
    assert listed(backend, "alice")[key].expires_at == much_later
    # Within the span the set is sure to live, a renewal leaves the set alone.
    before = int(client.pexpiretime(user_set(backend, "alice")))
    assert backend.touch(key, much_later + HOUR, start)
    assert int(client.pexpiretime(user_set(backend, "alice"))) == before


def test_saves_that_keep_the_user_are_one_script_and_leave_the_set_alone(
    redis_server: RedisServer,
) -> None:
    counter = Counter()
    pool = client_library().ConnectionPool(
        connection_class=counter.connection_class(), host="127.0.0.1", port=redis_server.port
    )
    client = client_library().Redis(connection_pool=pool)
    admin = redis_server.client()
    backend = RedisBackend(client, key_prefix=unique_prefix())
    key, start = key_of("a"), now()
    backend.create(key_of("warm up"), of_user("x"))  # loads the scripts
    backend.update(key_of("warm up"), Delta(start + HOUR, {"k": "1"}, user="x"), start)

    assert counter.measure(lambda: backend.create(key, of_user("alice")))[0] == 1
    keep = Delta(start + HOUR, {"k": "1"}, user="alice")
    n, sent = counter.measure(lambda: backend.update(key, keep, start))
    assert n == 1 and b"EVALSHA" in sent[0]
    assert counter.measure(lambda: backend.touch(key, start + 2 * HOUR, start))[0] == 1
    ran = server_commands(admin, lambda: backend.update(key, keep, start))
    assert ran["evalsha"] == 1
    assert not {"sadd", "srem", "pttl", "eval", "script|load"} & set(ran)
    assert ran["pexpireat"] == 1  # the hash's own

    # Sign-in is one script too; leaving a user costs one more, to unindex.
    assert counter.measure(lambda: backend.create(key_of("b"), of_user(None)))[0] == 1
    assert counter.measure(lambda: backend.update(key_of("b"), signed("bob"), start))[0] == 1
    assert counter.measure(lambda: backend.update(key_of("b"), signed(None), start))[0] == 2
    backend.clear()
    client.close()
    admin.close()


def test_cluster_saves_that_keep_the_user_are_one_round_trip(
    redis_cluster: RedisCluster,
) -> None:
    counter = Counter()
    client = redis_cluster.client()
    counter.count_cluster(client)
    backend = RedisBackend(client, key_prefix=unique_prefix())
    start = now()
    keys = [key_of(f"s{i}") for i in range(6)]
    # Every primary knows every script: which node holds a user's set depends
    # on the random prefix, and a node meeting a script first costs two more.
    for script in (scripts.INDEX, scripts.CREATE, scripts.UPDATE, scripts.TAKE):
        client.script_load(script)
    for script in (scripts.READ, scripts.UNINDEX, scripts.LIMIT):
        client.script_load(script)
    for key in keys:
        backend.create(key, of_user(key))
        backend.update(key, Delta(start + HOUR, user=key), start)
    for key in keys:
        keep = Delta(start + HOUR, {"k": "1"}, user=key)
        assert counter.measure(lambda: backend.update(key, keep, start))[0] == 1  # noqa: B023
        touch = counter.measure(lambda: backend.touch(key, start + HOUR, start))  # noqa: B023
        assert touch[0] == 1
        # Index, write, index again; then remove from the old set and read the hash back.
        switch = counter.measure(lambda: backend.update(key, signed("alice"), start))  # noqa: B023
        assert switch[0] == 5
    assert set(listed(backend, "alice")) == set(keys)
    for key in keys:
        assert counter.measure(lambda: backend.update(key, signed(None), start))[0] == 3  # noqa: B023
        assert counter.measure(lambda: backend.update(key, signed("bob"), start))[0] == 3  # noqa: B023
    assert set(listed(backend, "bob")) == set(keys)
    backend.clear()
    client.close()


def test_listing_a_thousand_sessions_of_one_user(
    either_backend: RedisBackend, request: pytest.FixtureRequest
) -> None:
    backend, count = either_backend, 1000
    created = {}
    for i in range(count):
        created[key_of(f"alice{i}")] = of_user("alice", {"i": str(i)})
        backend.create(key_of(f"alice{i}"), created[key_of(f"alice{i}")])
    for i in range(2 * count):
        backend.create(key_of(f"other{i}"), of_user(f"user{i % 50}"))
    start = now()
    times = []
    for _ in range(5):
        began = time.perf_counter()
        found = backend.user_records("alice", start)
        times.append(time.perf_counter() - began)
        assert dict(found) == created
    median = sorted(times)[len(times) // 2]
    kind = "cluster" if isinstance(backend.client, cluster_class()) else "server"
    line = (
        f"redis {kind} ({client_library().__name__}-py): listing {count} sessions of one user"
        f" among {3 * count}:"
        f" median {median * 1000:.1f} ms, best {min(times) * 1000:.1f} ms"
    )
    request.node.user_properties.append(("figures", line))
    assert median < 0.5, line


def test_scripts_are_reloaded_for_the_index(redis_backend: RedisBackend) -> None:
    backend, key = redis_backend, key_of("a")
    for step in (
        lambda: backend.create(key, of_user("alice")),
        lambda: backend.update(key, signed("bob"), now()),
        lambda: listed(backend, "bob"),
        lambda: backend.update(key, signed(None), now()),
    ):
        backend.client.script_flush()
        step()
    assert listed(backend, "alice") == {} and listed(backend, "bob") == {}
    assert members(backend, "alice") == members(backend, "bob") == set()


def test_a_refused_write_leaves_neither_session_nor_index(
    make_redis_server: t.Callable[..., RedisServer],
) -> None:
    server = make_redis_server()
    backend = RedisBackend.from_url(server.url)
    backend.create(key_of("a"), of_user(None))
    backend.client.config_set("maxmemory", 1)
    with pytest.raises(BackendError, match=r"OutOfMemoryError|OOM"):
        backend.create(key_of("b"), of_user("alice"))
    with pytest.raises(BackendError, match=r"OutOfMemoryError|OOM"):
        backend.update(key_of("a"), signed("alice"), now())
    backend.client.config_set("maxmemory", 0)
    assert backend.client.exists(backend.key_prefix + key_of("b")) == 0
    assert backend.client.exists(user_set(backend, "alice")) == 0
    assert backend.load(key_of("a")).user is None  # type: ignore[union-attr]
    backend.close()


def test_sentinel_client_keeps_the_index(redis_sentinel: RedisSentinel) -> None:
    client = redis_sentinel.client()
    backend = RedisBackend(client, key_prefix=unique_prefix())
    backend.create(key_of("a"), of_user("alice"))
    assert backend.update(key_of("a"), signed("bob"), now())
    assert set(listed(backend, "bob")) == {key_of("a")} and listed(backend, "alice") == {}
    assert backend.clear() == 1
    client.close()


def test_users_sessions_through_the_app(
    either_backend: RedisBackend, make_app: t.Callable[..., Flask]
) -> None:
    app = make_app(either_backend, SERVERSESSION_USER_KEY="_user_id")
    alice = [app.test_client() for _ in range(3)]
    for client in alice:
        assert client.post("/set", json={"_user_id": "alice"}).status_code == 200
    alice[1].post("/regenerate")
    bob = app.test_client()
    bob.post("/set", json={"_user_id": 7})
    app.test_client().post("/set", json={"cart": []})
    assert alice[2].post("/delete/_user_id").status_code == 200
    assert_indexed(either_backend)

    with app.app_context():
        users = store_of(app).users
        assert len(users.sessions("alice")) == 2
        assert [info.user_id for info in users.sessions(7)] == ["7"]
        assert users.revoke_user("alice", keep_current=False) == 2
        assert users.sessions("alice") == []
    assert alice[0].get("/dump").json == {}
    assert alice[2].get("/dump").json == {}  # signed out before: not revoked
    assert bob.get("/dump").json == {"_user_id": 7}
    assert members(either_backend, "alice") == set()
