from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import time
import types
import typing as t
import uuid
from pathlib import Path

import pytest

if t.TYPE_CHECKING:
    import redis
    import redis.cluster

    from flask_serversession.backends.redis import RedisBackend

HOST = "127.0.0.1"
START_TIMEOUT = 15.0

#: The client libraries the Redis backend's tests run with, against the same servers.
CLIENT_LIBRARIES = ("redis", "valkey")
# The library of the running test; ``redis_library`` sets it.
_current = ["redis"]


def client_library() -> types.ModuleType:
    """The client library of the running test: the ``redis`` or the ``valkey`` module.

    valkey-py keeps redis-py's names as aliases (``valkey.Redis``,
    ``valkey.ConnectionPool``, ``valkey.exceptions.ConnectionError``), so a
    test written against one reads the same against the other.
    """
    module = importlib.import_module(_current[0])
    for part in ("cluster", "sentinel", "exceptions", "backoff", "retry", "asyncio"):
        importlib.import_module(f"{_current[0]}.{part}")
    return module


def node_client(node: t.Any) -> t.Any:
    """The client of one cluster node: ``redis_connection`` (valkey-py: ``valkey_connection``)."""
    return getattr(node, "redis_connection", None) or node.valkey_connection


def cluster_class() -> type[t.Any]:
    """The cluster client class of the running test's library."""
    cluster = importlib.import_module(f"{_current[0]}.cluster")
    return t.cast("type[t.Any]", getattr(cluster, "ValkeyCluster", None) or cluster.RedisCluster)


@pytest.fixture
def redis_library(request: pytest.FixtureRequest) -> t.Iterator[str]:
    """The client library the test's clients and backends use (redis-py by default).

    ``tests/conftest.py`` runs every test that uses it once per library in
    :data:`CLIENT_LIBRARIES`.
    """
    name = t.cast(str, getattr(request, "param", "redis"))
    try:
        importlib.import_module(name)
    except ImportError:
        _unavailable(f"the {name} client library is not installed")
    _current[0] = name
    yield name
    _current[0] = "redis"


def _unavailable(reason: str) -> t.NoReturn:
    # Imported late: tests/conftest.py imports this module.
    from ..conftest import server_unavailable

    server_unavailable(reason)


def free_port() -> int:
    """Return a loopback TCP port that is free right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _retry() -> t.Any:
    lib = client_library()
    return lib.retry.Retry(lib.backoff.NoBackoff(), 1)


class RedisServer:
    """One ``redis-server`` process on a loopback port, in its own directory.

    :param directory: working directory (data, config and log file).
    :param args: extra ``redis-server`` arguments (``--replicaof`` ...).
    :param port: the port; a free one when not given. Kept across restarts.
    :param config: lines of a config file to start from (Sentinel needs one).
    """

    def __init__(
        self,
        directory: Path,
        *args: str,
        port: int | None = None,
        config: str | None = None,
    ) -> None:
        self.directory = directory
        self.args = args
        self.port = port or free_port()
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        """The server's URL, in the scheme of the running test's client library."""
        return f"{_current[0]}://{HOST}:{self.port}/0"

    @property
    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def client(self, **kwargs: t.Any) -> redis.Redis:
        """A new client on this server, with short timeouts and one retry."""
        kwargs.setdefault("socket_timeout", 5.0)
        kwargs.setdefault("socket_connect_timeout", 2.0)
        kwargs.setdefault("retry", _retry())
        return t.cast("redis.Redis", client_library().Redis(host=HOST, port=self.port, **kwargs))

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        executable = shutil.which("redis-server")
        if executable is None:
            _unavailable("redis-server is not installed")
        command = [executable]
        if self.config is not None:
            config = self.directory / "redis.conf"
            config.write_text(self.config)
            command.append(str(config))
        command += [
            "--port", str(self.port), "--bind", HOST, "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"), "--save", "", "--appendonly", "no",
            "--daemonize", "no", *self.args,
        ]  # fmt: skip
        with open(self.directory / "stderr.log", "ab") as stderr:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                self.process = None
                err = (self.directory / "stderr.log").read_text(errors="replace")
                _unavailable(f"redis-server on port {self.port} exited: {err}{self.log}")
            if self._answers():
                return self
            if time.monotonic() > deadline:
                self.stop()
                _unavailable(f"redis-server on port {self.port} did not start: {self.log}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        """Stop the server (SIGTERM), waiting for it to exit."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


class RedisCluster:
    """A three-primary Redis Cluster on loopback ports.

    :param servers: the started, joined nodes.
    """

    def __init__(self, servers: list[RedisServer]) -> None:
        self.servers = servers
        self.ports = [s.port for s in servers]

    def client(self, **kwargs: t.Any) -> redis.cluster.RedisCluster:
        kwargs.setdefault("socket_timeout", 5.0)
        kwargs.setdefault("socket_connect_timeout", 2.0)
        client = cluster_class()(host=HOST, port=self.ports[0], **kwargs)
        return t.cast("redis.cluster.RedisCluster", client)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


class RedisSentinel:
    """One primary and one Sentinel monitoring it as ``service_name``.

    :param primary: the monitored server.
    :param sentinel: the ``redis-server --sentinel`` process.
    """

    service_name = "serversession"

    def __init__(self, primary: RedisServer, sentinel: RedisServer) -> None:
        self.primary = primary
        self.sentinel = sentinel

    def client(self, **kwargs: t.Any) -> redis.Redis:
        """A Sentinel ``master_for()`` client of the primary."""
        Sentinel = client_library().sentinel.Sentinel

        kwargs.setdefault("socket_timeout", 5.0)
        kwargs.setdefault("socket_connect_timeout", 2.0)
        kwargs.setdefault("retry", _retry())
        timeouts = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0}
        sentinel = Sentinel([(HOST, self.sentinel.port)], sentinel_kwargs=timeouts, **kwargs)
        return t.cast("redis.Redis", sentinel.master_for(self.service_name))

    def stop(self) -> None:
        self.sentinel.stop()
        self.primary.stop()


def _wait_cluster_ok(servers: list[RedisServer]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    for server in servers:
        client = server.client()
        try:
            while client.cluster("INFO").get("cluster_state") != "ok":
                if time.monotonic() > deadline:
                    _unavailable(f"Redis Cluster did not reach cluster_state:ok: {server.log}")
                time.sleep(0.05)
        finally:
            client.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[RedisServer]:
    """A plain Redis server shared by the whole test session."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[RedisCluster]:
    """A three-primary Redis Cluster shared by the whole test session."""
    yield from make_cluster(tmp_path_factory.mktemp("redis-cluster"))


def make_cluster(root: Path, *args: str) -> t.Iterator[RedisCluster]:
    """Start a three-primary Redis Cluster under ``root`` (each node given ``args`` too),
    yield it, and stop it."""
    redis_cli = shutil.which("redis-cli")
    if redis_cli is None:
        _unavailable("redis-cli is not installed")
    servers: list[RedisServer] = []
    try:
        for n in range(3):
            directory = root / f"node{n}"
            servers.append(
                RedisServer(
                    directory,
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(directory / "nodes.conf"),
                    "--cluster-port", str(free_port()),
                    "--cluster-node-timeout", "5000",
                    *args,
                ).start()
            )  # fmt: skip
        result = subprocess.run(
            [
                *(redis_cli, "--cluster", "create"),
                *(f"{HOST}:{s.port}" for s in servers),
                *("--cluster-replicas", "0", "--cluster-yes"),
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            _unavailable(f"redis-cli --cluster create failed: {result.stdout!r} {result.stderr!r}")
        _wait_cluster_ok(servers)
        cluster = RedisCluster(servers)
        yield cluster
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[RedisSentinel]:
    """A primary watched by one Sentinel, shared by the whole test session."""
    root = tmp_path_factory.mktemp("redis-sentinel")
    primary = RedisServer(root / "primary").start()
    config = (
        f"sentinel monitor {RedisSentinel.service_name} {HOST} {primary.port} 1\n"
        f"sentinel down-after-milliseconds {RedisSentinel.service_name} 5000\n"
    )
    try:
        sentinel = RedisServer(root / "sentinel", "--sentinel", config=config).start()
    except BaseException:
        primary.stop()
        raise
    setup = RedisSentinel(primary, sentinel)
    yield setup
    setup.stop()


@pytest.fixture
def make_redis_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> t.Iterator[t.Callable[..., RedisServer]]:
    """Start dedicated servers for one test (to kill, restart, make replicas).

    Call it with extra ``redis-server`` arguments and optionally ``port=``;
    every server it started is stopped after the test.
    """
    servers: list[RedisServer] = []

    def make(*args: str, port: int | None = None) -> RedisServer:
        server = RedisServer(tmp_path_factory.mktemp("redis-own"), *args, port=port)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


def unique_prefix() -> str:
    """A key prefix no other test uses, ending in a separator."""
    return f"test:{os.getpid()}:{uuid.uuid4().hex}:"


@pytest.fixture
def redis_backend(redis_server: RedisServer, redis_library: str) -> t.Iterator[RedisBackend]:
    """An empty ``RedisBackend`` on the shared server, under its own prefix."""
    from flask_serversession.backends.redis import RedisBackend

    client = redis_server.client()
    backend = RedisBackend(client, key_prefix=unique_prefix())
    yield backend
    backend.clear()
    client.close()


@pytest.fixture
def redis_cluster_backend(
    redis_cluster: RedisCluster, redis_library: str
) -> t.Iterator[RedisBackend]:
    """An empty ``RedisBackend`` on the shared cluster, under its own prefix."""
    from flask_serversession.backends.redis import RedisBackend

    client = redis_cluster.client()
    backend = RedisBackend(client, key_prefix=unique_prefix())
    yield backend
    backend.clear()
    client.close()


@pytest.fixture
def redis_decoded_backend(
    redis_server: RedisServer, redis_library: str
) -> t.Iterator[RedisBackend]:
    """As ``redis_backend``, on a client built with ``decode_responses=True``."""
    from flask_serversession.backends.redis import RedisBackend

    client = redis_server.client(decode_responses=True)
    backend = RedisBackend(client, key_prefix=unique_prefix())
    yield backend
    backend.clear()
    client.close()


def _replace(client: t.Any, name: str, kind: str) -> None:
    client.delete(name)
    if kind == "string":
        client.set(name, "not a session")
    elif kind == "list":
        client.rpush(name, "d:user", '"alice"')
    elif kind == "set":
        client.sadd(name, "d:user")
    else:
        client.zadd(name, {"d:user": 1.0})


#: Ways to damage the session hash at ``name``, each ``damage(client, name)``,
#: through any client (plain or cluster). Every one makes it undecodable.
DAMAGES: dict[str, t.Callable[[t.Any, str], object]] = {
    "created_us garbage": lambda c, n: c.hset(n, "created_us", "yesterday"),
    "expires_us garbage": lambda c, n: c.hset(n, "expires_us", "soon"),
    "expires_us float": lambda c, n: c.hset(n, "expires_us", "4e15"),
    "expires_us signed": lambda c, n: c.hset(n, "expires_us", "+4000000000000000"),
    "expires_us huge": lambda c, n: c.hset(n, "expires_us", "9" * 18),
    "created_us missing": lambda c, n: c.hdel(n, "created_us"),
    "expires_us missing": lambda c, n: c.hdel(n, "expires_us"),
    "metadata missing": lambda c, n: c.hdel(n, "created_us", "expires_us"),
    "stray field": lambda c, n: c.hset(n, "stray", "1"),
    "non-UTF-8 value": lambda c, n: c.hset(n, "d:user", b'"\xff\xfe"'),
    "non-UTF-8 name": lambda c, n: c.hset(n, b"d:\xc3(", '"x"'),
    "string": lambda c, n: _replace(c, n, "string"),
    "list": lambda c, n: _replace(c, n, "list"),
    "set": lambda c, n: _replace(c, n, "set"),
    "sorted set": lambda c, n: _replace(c, n, "zset"),
    "user without indexed_us": lambda c, n: c.hset(n, "user", "alice"),
    "indexed_us without user": lambda c, n: c.hset(n, "indexed_us", str(4 * 10**15)),
    "indexed_us garbage": lambda c, n: c.hset(n, mapping={"user": "alice", "indexed_us": "later"}),
    "non-UTF-8 user": lambda c, n: c.hset(n, mapping={"user": b"\xff", "indexed_us": 4 * 10**15}),
}

#: The damages an update sees by itself (the layout, not bytes inside a field).
LAYOUT_DAMAGES = [n for n in DAMAGES if not n.startswith("non-UTF-8")]


class Counter:
    """Counts the requests a client writes to its socket: one per round trip."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def connection_class(self, base: type[t.Any] | None = None) -> type[t.Any]:
        sent = self.sent
        base = client_library().Connection if base is None else base

        class CountingConnection(base):  # type: ignore[valid-type,misc]
            def send_packed_command(self, command: t.Any, check_health: bool = True) -> None:
                sent.append(command if isinstance(command, bytes) else b"".join(command))
                super().send_packed_command(command, check_health)

        return CountingConnection

    def count_cluster(self, client: t.Any) -> None:
        """Count what ``client``, a ``RedisCluster``, sends to every primary."""
        for node in client.get_primaries():
            pool = node_client(node).connection_pool
            pool.connection_class = self.connection_class(pool.connection_class)
            pool.disconnect()
            pool.reset()

    def measure(self, call: t.Callable[[], object]) -> tuple[int, list[bytes]]:
        del self.sent[:]
        call()
        return len(self.sent), list(self.sent)


def _with_library(name: str, make: t.Callable[[], t.Any]) -> t.Any:
    """What ``make`` returns when called with ``name`` as the client library."""
    try:
        importlib.import_module(name)
    except ImportError:
        _unavailable(f"the {name} client library is not installed")
    before = _current[0]
    _current[0] = name
    try:
        return make()
    finally:
        _current[0] = before


@pytest.fixture
def valkey_backend(redis_server: RedisServer) -> t.Iterator[RedisBackend]:
    """As ``redis_backend``, on a valkey-py client (``valkey.Valkey``)."""
    from flask_serversession.backends.redis import RedisBackend

    client = _with_library("valkey", redis_server.client)
    backend = RedisBackend(client, key_prefix=unique_prefix())
    yield backend
    backend.clear()
    client.close()


@pytest.fixture
def valkey_cluster_backend(redis_cluster: RedisCluster) -> t.Iterator[RedisBackend]:
    """As ``redis_cluster_backend``, on a ``valkey.cluster.ValkeyCluster`` client."""
    from flask_serversession.backends.redis import RedisBackend

    client = _with_library("valkey", redis_cluster.client)
    backend = RedisBackend(client, key_prefix=unique_prefix())
    yield backend
    backend.clear()
    client.close()
