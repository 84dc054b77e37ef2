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

DATABASE = "serversession_test"


def _unavailable(reason: str) -> t.NoReturn:
    # Imported late: tests/conftest.py imports this module.
    from ..conftest import server_unavailable

    server_unavailable(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
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
    script = (
        f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done;"
        f" {shlex.join(stop)} >/dev/null 2>&1; rm -rf {shlex.quote(base)}"
    )
    return subprocess.Popen(
        ["sh", "-c", script],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture(scope="session")
def postgres_url() -> t.Iterator[str]:
    """Start a throwaway PostgreSQL server for the test session; yield a database URL."""
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if shutil.which(name) is None]
    if missing:
        _unavailable(f"PostgreSQL binaries not on PATH: {', '.join(missing)}")
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no 'postgres' user to run initdb")

    base = tempfile.mkdtemp(prefix="serversession-pg-")
    if os.geteuid() == 0:
        os.chown(base, owner.pw_uid, owner.pw_gid)
    data = os.path.join(base, "data")
    log = os.path.join(base, "server.log")
    port = free_port()
    stop = _as_postgres(["pg_ctl", "stop", "-D", data, "-m", "immediate", "-w"])
    watchdog = _watchdog(stop, base)
    try:
        init = _run_as_postgres(
            ["initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]
        )
        if init.returncode:
            _unavailable(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        options = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {base}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        start = _run_as_postgres(
            ["pg_ctl", "start", "-D", data, "-l", log, "-w", "-t", "60", "-o", options]
        )
        if start.returncode:
            with open(log, errors="replace") as f:
                detail = f.read()[-2000:]
            _unavailable(f"PostgreSQL did not start: {start.stderr.strip()}\n{detail}")

        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f"CREATE DATABASE {DATABASE}")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/{DATABASE}"
    finally:
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            subprocess.run(stop, capture_output=True, timeout=60, check=False)
        shutil.rmtree(base, ignore_errors=True)
        watchdog.terminate()
        watchdog.wait()
