"""Throwaway Redis and PostgreSQL servers on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import typing as t

HOST = "127.0.0.1"
START_TIMEOUT = 30.0


class ServerUnavailable(Exception):
    """A server binary is missing or the server did not start."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServerUnavailable(f"nothing answered on {HOST}:{port} within {timeout:.0f} s")


class RedisServer:
    """A redis-server without persistence, bound to loopback."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerUnavailable("redis-server is not on PATH")
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="bench-redis-")
        command = [
            binary,
            "--bind", HOST,
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", self.directory,
            "--databases", "32",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            wait_for_port(self.port)
        except BaseException:  # also Ctrl-C: never leave a server behind
            self.stop()
            raise

    def url(self, db: int = 0) -> str:
        return f"redis://{HOST}:{self.port}/{db}"

    def version(self) -> str:
        import redis

        client = redis.Redis(host=HOST, port=self.port)
        try:
            return server_version(client.info("server"))
        finally:
            client.close()

    def stop(self) -> None:
        end_process(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)


def server_version(info: t.Mapping[str, t.Any]) -> str:
    """The server's version from its ``INFO server``, naming Valkey when it is one.

    Valkey reports ``redis_version:7.2.4`` whatever its own version, for
    clients that compare it; its own is ``valkey_version`` (and
    ``server_name:valkey``).
    """
    if info.get("server_name") == "valkey" or "valkey_version" in info:
        return f"{info['valkey_version']} (Valkey)"
    return str(info["redis_version"])


def end_process(process: subprocess.Popen[t.Any]) -> None:
    """Terminate ``process``, killing it if it does not exit within 10 seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _as_postgres(command: str) -> None:
    """Run a shell command as the ``postgres`` user (initdb refuses to run as root)."""
    # su may reset PATH, and Debian keeps the PostgreSQL binaries off the default one.
    script = f"PATH={shlex.quote(os.environ.get('PATH', ''))}; {command}"
    if os.geteuid() == 0:
        argv = ["su", "postgres", "-s", "/bin/sh", "-c", script]
    else:
        argv = ["/bin/sh", "-c", script]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise ServerUnavailable(f"{command.split()[0]} failed: {result.stderr.strip()[-500:]}")


class PostgresServer:
    """A PostgreSQL cluster in a temporary directory, listening on loopback only.

    Durability settings are left at their defaults (fsync on), as in production;
    ``BENCH_POSTGRES_SETTINGS`` (space-separated ``name=value``) sets others.
    """

    def __init__(self) -> None:
        for binary in ("initdb", "pg_ctl", "postgres"):
            if shutil.which(binary) is None:
                raise ServerUnavailable(f"{binary} is not on PATH")
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="bench-pg-")
        self.data = os.path.join(self.directory, "data")
        self.started = False
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        try:
            _as_postgres(f"initdb -D {self.data} -U postgres -A trust --no-sync -E UTF8")
            options = f"-p {self.port} -k {self.directory} -c listen_addresses={HOST}"
            # e.g. BENCH_POSTGRES_SETTINGS="max_wal_size=16GB": to try a setting's effect.
            for setting in os.environ.get("BENCH_POSTGRES_SETTINGS", "").split():
                options += f" -c {setting}"
            log = os.path.join(self.directory, "log")
            _as_postgres(f"pg_ctl -D {self.data} -l {log} -w -t 60 -o '{options}' start")
            self.started = True
        except (ServerUnavailable, subprocess.TimeoutExpired) as e:
            self.stop()
            raise ServerUnavailable(str(e)) from e
        except BaseException:
            self.started = True  # pg_ctl may have started it before the interrupt
            self.stop()
            raise

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{database}"

    def version(self) -> str:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url())
        try:
            with engine.connect() as conn:
                return str(conn.execute(sa.text("SHOW server_version")).scalar_one())
        finally:
            engine.dispose()

    def stop(self) -> None:
        if self.started:
            self.started = False
            with contextlib.suppress(ServerUnavailable, subprocess.TimeoutExpired):
                _as_postgres(f"pg_ctl -D {self.data} -m fast -w -t 30 stop")
        shutil.rmtree(self.directory, ignore_errors=True)


_S = t.TypeVar("_S", RedisServer, PostgresServer)


class Servers:
    """The servers of one run; a missing one is reported and left as None."""

    def __init__(self, *, want_redis: bool, want_postgres: bool) -> None:
        self.redis: RedisServer | None = None
        self.postgres: PostgresServer | None = None
        self.notes: list[str] = []
        try:
            if want_redis:
                self.redis = self._start("Redis", RedisServer)
            if want_postgres:
                self.postgres = self._start("PostgreSQL", PostgresServer)
        except BaseException:
            self.stop()
            raise

    def _start(self, name: str, factory: t.Callable[[], _S]) -> _S | None:
        try:
            server = factory()
        except ServerUnavailable as e:
            note = f"NOTE: {name} is skipped: {e}."
            print(note, flush=True)
            self.notes.append(note)
            return None
        print(f"Started {name} on {HOST}:{server.port}.", flush=True)
        return server

    def stop(self) -> None:
        for server in (self.redis, self.postgres):
            if server is not None:
                server.stop()
        self.redis = self.postgres = None

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
