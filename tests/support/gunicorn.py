from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import signal
import subprocess
import sys
import time
import typing as t
from pathlib import Path

from .postgres import free_port
from .watchdog import after_death

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def _unavailable(reason: str) -> t.NoReturn:
    from ..conftest import server_unavailable

    server_unavailable(reason)


def _watchdog(group: int) -> subprocess.Popen[bytes]:
    """End process group ``group`` if this process dies without tearing down."""
    return after_death(f"kill -TERM -{group} 2>/dev/null; sleep 5; kill -KILL -{group} 2>/dev/null")


class Gunicorn:
    """A gunicorn master and its workers serving ``app`` on a loopback port.

    Runs from the repository root in its own process group, so that stopping it
    also ends workers that the master left behind.

    :param app: what gunicorn loads, e.g. ``"tests.support.fault_app:create_app()"``.
    :param env: extra environment variables (the app's configuration).
    :param log_file: where the master and workers write their log.
    :param workers: number of worker processes.
    :param threads: threads per worker (the ``gthread`` class when above 1).
    :param ready_path: a path that answers 200 once a worker serves.
    :param worker_class: gunicorn's worker class (``gevent``...); by default
        ``gthread`` or ``sync`` from ``threads``.
    :param preload: load the app in the master, before the workers are forked.
    """

    def __init__(
        self,
        app: str,
        *,
        env: t.Mapping[str, str],
        log_file: Path,
        workers: int = 3,
        threads: int = 2,
        ready_path: str = "/health",
        worker_class: str | None = None,
        preload: bool = False,
    ) -> None:
        self.app = app
        self.env = dict(env)
        self.log_file = log_file
        self.workers = workers
        self.threads = threads
        self.ready_path = ready_path
        self.worker_class = worker_class or ("gthread" if threads > 1 else "sync")
        self.preload = preload
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        """The end of the log, for error messages."""
        try:
            return self.log_file.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start(self) -> Gunicorn:
        """Start the server; return once every worker runs and one answers ``ready_path``."""
        try:
            import gunicorn
        except ImportError:
            _unavailable("gunicorn is not installed")
        command = [
            sys.executable, "-m", "gunicorn",
            "--bind", f"{HOST}:{self.port}",
            "--workers", str(self.workers),
            "--worker-class", self.worker_class,
            "--threads", str(self.threads),
            "--timeout", "30", "--graceful-timeout", "3",
            "--chdir", str(ROOT),
        ]  # fmt: skip
        if gunicorn.version_info >= (25,):
            # Else each server would share one control socket in the home directory.
            command.append("--no-control-socket")
        if self.preload:
            command.append("--preload")
        command.append(self.app)
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._watchdog = _watchdog(self.process.pid)
        deadline = time.monotonic() + START_TIMEOUT
        # The master forks its workers a moment apart: wait for all of them.
        while not self._answers() or len(self.worker_pids()) < self.workers:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gunicorn did not start: {shlex.join(command)}\n{self.log()}")
            time.sleep(0.05)
        return self

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _answers(self) -> bool:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
        try:
            conn.request("GET", self.ready_path)
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def worker_pids(self) -> list[int]:
        """The pids of the master's live worker processes (Linux ``/proc``)."""
        if self.process is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # Fields after the parenthesised command: state, ppid, ...
            fields = stat.rpartition(")")[2].split()
            if fields[0] not in "ZX" and int(fields[1]) == self.process.pid:
                pids.append(int(entry.name))
        return sorted(pids)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM); SIGKILL the whole group if that takes too long."""
        if self.process is not None:
            group = self.process.pid
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            self.process = None
        if self._watchdog is not None:
            self._watchdog.terminate()
            self._watchdog.wait()
            self._watchdog = None
