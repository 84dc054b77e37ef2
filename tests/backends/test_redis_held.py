"""The Redis backend's connection held per thread: one connection per thread, given back
when the thread ends, never more than half the pool, safe across a restart of Redis
and across gunicorn's fork of a preloaded app."""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
import typing as t
import uuid
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from pathlib import Path

import pytest

from flask_serversession.backends.base import Delta
from flask_serversession.backends.base import Record
from flask_serversession.backends.redis import RedisBackend
from flask_serversession.backends.redis.held import holds_connections

from ..support.gunicorn import Gunicorn
from ..support.gunicorn import HOST
from ..support.redis_servers import client_library
from ..support.redis_servers import Counter
from ..support.redis_servers import RedisServer
from ..support.redis_servers import unique_prefix

pytestmark = pytest.mark.usefixtures("redis_library")

HOUR = timedelta(hours=1)
#: Bounds of the load loops.
WAIT = 10.0


def now() -> datetime:
    return datetime.now(timezone.utc)


def key_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def record(value: str) -> Record:
    start = now()
    return Record({"k": value}, start, start + HOUR)


def connections(server: RedisServer, backend: RedisBackend) -> int:
    """Connections the server has from the pool of ``backend``'s client."""
    name = backend.client.connection_pool.connection_kwargs["client_name"]  # type: ignore[union-attr]
    admin = server.client()
    try:
        return sum(1 for c in admin.client_list() if c.get("name") == name)
    finally:
        admin.close()


def backend_on(server: RedisServer, **pool: t.Any) -> RedisBackend:
    lib = client_library()
    connection_pool = lib.ConnectionPool(
        host=HOST,
        port=server.port,
        client_name=f"held-{uuid.uuid4().hex}",
        retry=lib.retry.Retry(lib.backoff.NoBackoff(), 1),
        **pool,
    )
    return RedisBackend(lib.Redis(connection_pool=connection_pool), key_prefix=unique_prefix())


def in_thread(work: t.Callable[[], object]) -> None:
    failures: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as e:  # reported in the test's thread
            failures.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert failures == []


def test_a_thread_runs_its_session_commands_on_one_connection(redis_server: RedisServer) -> None:
    counter = Counter()
    lib = client_library()
    pool = lib.ConnectionPool(
        connection_class=counter.connection_class(), host=HOST, port=redis_server.port
    )
    backend = RedisBackend(lib.Redis(connection_pool=pool), key_prefix=unique_prefix())
    assert holds_connections(backend.client)
    key, start = key_of("a"), now()
    backend.create(key_of("warm up"), record('"w"'))  # connects, loads the script
    backend.update(key_of("warm up"), Delta(start + HOUR, {"k": "1"}), start)

    sent, _ = counter.measure(
        lambda: [
            backend.create(key, record('"v"')),
            backend.load(key),
            backend.update(key, Delta(start + 2 * HOUR, {"k": '"x"'}), start),
            backend.load(key),
            backend.delete(key),
            backend.load(key),
        ]
    )
    # One request per command: no connection was made or taken on the way.
    assert sent == 6
    assert pool._created_connections == 1  # type: ignore[attr-defined]
    backend.clear()


def test_a_thread_gives_its_connection_back_when_it_ends(redis_server: RedisServer) -> None:
    backend = backend_on(redis_server)
    key = key_of("a")
    in_thread(lambda: backend.create(key, record('"v"')))
    for _ in range(5):
        # One thread after another: each finds the connection the last one gave back.
        in_thread(lambda: backend.load(key))
    assert connections(redis_server, backend) == 1
    backend.clear()
    backend.client.connection_pool.disconnect()  # type: ignore[union-attr]


def test_threads_beyond_half_the_pool_run_their_commands_through_it(
    redis_server: RedisServer,
) -> None:
    # A pool of 4: two threads hold one each, the others share the other two.
    backend = backend_on(redis_server, max_connections=4)
    key = key_of("a")
    backend.create(key, record('"v"'))
    loaded, release = threading.Barrier(7), threading.Event()
    one_at_a_time = threading.Lock()
    seen: list[Record | None] = []

    def load_and_stay() -> None:
        # Loads that overlap would need more connections than the pool has anyway.
        with one_at_a_time:
            seen.append(backend.load(key))
        loaded.wait(WAIT)
        release.wait(WAIT)

    threads = [threading.Thread(target=load_and_stay) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        loaded.wait(WAIT)
        # Six threads live at once; the pool still serves commands of its own.
        assert backend.count(now()) == 1
        assert connections(redis_server, backend) <= 4
    finally:
        release.set()
        for thread in threads:
            thread.join(WAIT)
    assert len(seen) == 6 and all(r is not None and r.data == {"k": '"v"'} for r in seen)
    backend.clear()
    backend.client.connection_pool.disconnect()  # type: ignore[union-attr]


def test_a_restarted_server_costs_one_reconnection(
    make_redis_server: t.Callable[..., RedisServer],
) -> None:
    server = make_redis_server()
    backend = backend_on(server)
    key = key_of("a")
    backend.create(key, record('"v"'))
    assert backend.load(key) is not None
    server.stop()
    server.start()
    # The held connection died with the server; its next command reconnects.
    assert backend.load(key) is None  # the server keeps nothing across a restart here
    backend.create(key, record('"w"'))
    loaded = backend.load(key)
    assert loaded is not None and loaded.data == {"k": '"w"'}
    backend.client.connection_pool.disconnect()  # type: ignore[union-attr]


def test_clients_that_keep_their_own_connection_are_used_as_they_are(
    redis_server: RedisServer, redis_cluster: t.Any
) -> None:
    lib = client_library()
    single = lib.Redis(host=HOST, port=redis_server.port, single_connection_client=True)
    assert not holds_connections(single)
    assert not holds_connections(redis_cluster.client())
    assert holds_connections(lib.Redis(host=HOST, port=redis_server.port))
    backend = RedisBackend(single, key_prefix=unique_prefix())
    backend.create(key_of("a"), record('"v"'))
    assert backend.load(key_of("a")) is not None
    backend.clear()
    single.close()


class Visitor:
    """One client of the preloaded app: its own cookie and its own key."""

    def __init__(self, port: int, index: int) -> None:
        self.port = port
        self.key = f"visitor{index}"
        self.cookie = ""
        self.problems: list[str] = []

    def request(self, method: str, path: str) -> tuple[int, t.Any]:
        connection = http.client.HTTPConnection(HOST, self.port, timeout=WAIT)
        try:
            headers = {"Cookie": self.cookie} if self.cookie else {}
            connection.request(method, path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            cookie = response.getheader("Set-Cookie")
            if cookie:
                self.cookie = cookie.split(";", 1)[0]
            return response.status, json.loads(body) if body else None
        finally:
            connection.close()

    def run(self, rounds: int, deadline: float) -> None:
        for value in range(rounds):
            if time.monotonic() > deadline:
                self.problems.append("ran out of time")
                return
            status, _ = self.request("POST", f"/write?key={self.key}&value={value}")
            if status != 200:
                self.problems.append(f"write answered {status}")
                continue
            status, data = self.request("GET", "/read")
            if status != 200 or data != {self.key: value}:
                self.problems.append(f"read answered {status} {data!r}, wrote {value}")


def test_workers_of_a_preloaded_app_use_connections_of_their_own(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """The master used the store before it forked: each sync worker takes its own connection.

    A worker that went on with the master's connection would share its
    socket with its siblings, and read their replies.
    """
    env = {
        "FAULT_SECRET_KEY": "preload",
        "FAULT_SERVERSESSION_BACKEND": "redis",
        "FAULT_SERVERSESSION_REDIS_URL": redis_server.url,
        "FAULT_SERVERSESSION_KEY_PREFIX": unique_prefix(),
    }
    with Gunicorn(
        "tests.support.preload_app:create_app()",
        env=env,
        log_file=tmp_path / "gunicorn.log",
        workers=4,
        threads=1,
        preload=True,
    ) as server:
        visitors = [Visitor(server.port, i) for i in range(8)]
        deadline = time.monotonic() + 60
        threads = [threading.Thread(target=v.run, args=(25, deadline)) for v in visitors]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(70)
        log = server.log()
    assert [v.problems for v in visitors] == [[]] * 8, log
