from __future__ import annotations

import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import typing as t

import pytest

from .watchdog import after_death

DATABASE = "serversession_test"
HOST = "127.0.0.1"


def _unavailable(reason: str) -> t.NoReturn:
    # Imported late: tests/conftest.py imports this module.
    from ..conftest import server_unavailable

    server_unavailable(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _as_postgres(args: list[str]) -> list[str]:
    """As root, run ``args`` as the ``postgres`` user: initdb refuses to run as root."""
    # su may reset PATH, and Debian keeps the binaries off the default one.
    args = [shutil.which(args[0]) or args[0], *args[1:]]
    if os.geteuid() == 0:
        return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(args)]
    return args


def _run_as_postgres(args: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _as_postgres(args), capture_output=True, text=True, timeout=timeout, check=False
    )


def _watchdog(stop: list[str], base: str) -> subprocess.Popen[bytes]:
    """Stop the server and remove ``base`` if this process dies without tearing down."""
    return after_death(f"{shlex.join(stop)} >/dev/null 2>&1; rm -rf {shlex.quote(base)}")


class PostgresServer:
    """One throwaway PostgreSQL server on a loopback port, in its own directory.

    The first :meth:`start` creates the cluster and the database :data:`DATABASE`;
    later starts reuse both (same port, same data). As root, initdb and pg_ctl run
    as the ``postgres`` user. A watchdog process stops the server and removes its
    directory if the test process dies without calling :meth:`close`.

    :param durable: keep fsync and synchronous commit on, so that a commit that was
        acknowledged survives a crash (``stop("immediate")``). Off is faster.
    :param port: the port; a free one when not given. Kept across restarts.
    """

    def __init__(self, *, durable: bool = False, port: int | None = None) -> None:
        self.durable = durable
        self.port = port or free_port()
        self.base: str | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> str:
        if self.base is None:
            raise RuntimeError("the server was never started")
        return os.path.join(self.base, "data")

    @property
    def log_file(self) -> str:
        if self.base is None:
            raise RuntimeError("the server was never started")
        return os.path.join(self.base, "server.log")

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the test database."""
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{DATABASE}"

    @property
    def running(self) -> bool:
        return self.base is not None and os.path.exists(
            os.path.join(self.data_dir, "postmaster.pid")
        )

    def log(self) -> str:
        """The end of the server log, for error messages."""
        try:
            with open(self.log_file, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def _stop_command(self, mode: str) -> list[str]:
        return _as_postgres(["pg_ctl", "stop", "-D", self.data_dir, "-m", mode, "-w", "-t", "60"])

    def _create(self) -> None:
        missing = [n for n in ("initdb", "pg_ctl", "postgres") if shutil.which(n) is None]
        if missing:
            _unavailable(f"PostgreSQL binaries not on PATH: {', '.join(missing)}")
        owner = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                _unavailable("running as root and there is no 'postgres' user to run initdb")
        # Not pytest's tmp_path: as root that is not reachable by the postgres user.
        self.base = tempfile.mkdtemp(prefix="serversession-pg-")
        if owner is not None:
            os.chown(self.base, owner.pw_uid, owner.pw_gid)
        self._watchdog = _watchdog(self._stop_command("immediate"), self.base)
        command = ["initdb", "-D", self.data_dir, "-U", "postgres", "-A", "trust", "-E", "UTF8"]
        # --no-sync only skips initdb's final flush: a server crash loses nothing by it.
        init = _run_as_postgres([*command, "--no-sync"])
        if init.returncode:
            self.close()
            _unavailable(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")

    def start(self) -> PostgresServer:
        """Start the server and wait until it accepts connections."""
        first = self.base is None
        if first:
            self._create()
        options = f"-c listen_addresses={HOST} -p {self.port} -k {self.base}"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        command = ["pg_ctl", "start", "-D", self.data_dir, "-l", self.log_file, "-w", "-t", "60"]
        start = _run_as_postgres([*command, "-o", options])
        if start.returncode:
            message = f"PostgreSQL did not start: {start.stderr.strip()}\n{self.log()}"
            if first:
                self.close()
                _unavailable(message)
            raise RuntimeError(message)
        if first:
            import psycopg

            with psycopg.connect(
                host=HOST, port=self.port, user="postgres", dbname="postgres", autocommit=True
            ) as conn:
                conn.execute(f"CREATE DATABASE {DATABASE}")
        return self

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stop(self, mode: t.Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Stop the server; ``"immediate"`` aborts it the way a crash would."""
        if not self.running:
            return
        result = subprocess.run(
            self._stop_command(mode), capture_output=True, text=True, timeout=90, check=False
        )
        if result.returncode and self.running:
            raise RuntimeError(f"pg_ctl stop -m {mode} failed: {result.stderr.strip()}")

    def restart(self, mode: t.Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Stop the server and start it again on the same port and data."""
        self.stop(mode)
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        if self.base is not None:
            if self.running:
                subprocess.run(
                    self._stop_command("immediate"), capture_output=True, timeout=90, check=False
                )
            shutil.rmtree(self.base, ignore_errors=True)
        if self._watchdog is not None:
            self._watchdog.terminate()
            self._watchdog.wait()
            self._watchdog = None


@pytest.fixture(scope="session")
def postgres_url() -> t.Iterator[str]:
    """Start a throwaway PostgreSQL server for the test session; yield a database URL."""
    server = PostgresServer()
    try:
        yield server.start().url
    finally:
        server.close()


@pytest.fixture
def make_postgres() -> t.Iterator[t.Callable[..., PostgresServer]]:
    """Start private servers for one test (to stop, crash, restart).

    Call it as ``make_postgres(durable=True)`` to keep fsync on; every server
    it started is removed after the test.
    """
    servers: list[PostgresServer] = []

    def make(*, durable: bool = False) -> PostgresServer:
        server = PostgresServer(durable=durable)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.close()
