"""Instructions a redis-server runs per request, counted by callgrind.

``usec_per_call`` is wall time inside the server, which a busy machine
inflates; the instructions a request costs the server do not move with the
load. A second redis-server runs under ``valgrind --tool=callgrind`` on a
free loopback port; ``callgrind_control --dump`` writes what it ran since
the last dump, so a batch of requests between two dumps is counted alone.
Only the server's own user-space code is counted, not the kernel's work on
its sockets.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import time
import typing as t

from servers import end_process
from servers import free_port
from servers import HOST
from servers import ServerUnavailable
from servers import wait_for_port

#: callgrind runs the server some 50 times slower: it starts slowly too.
START_TIMEOUT = 120.0
DUMP_TIMEOUT = 60.0
_TOTALS = re.compile(r"^(?:totals|summary):\s+(\d+)", re.MULTILINE)


class CountedRedis:
    """A redis-server without persistence under callgrind, bound to loopback.

    :param directory: where callgrind writes its dumps.
    """

    def __init__(self, directory: str) -> None:
        server = shutil.which("redis-server")
        if server is None or shutil.which("valgrind") is None:
            raise ServerUnavailable("redis-server or valgrind is not on PATH")
        if shutil.which("callgrind_control") is None:
            raise ServerUnavailable("callgrind_control is not on PATH")
        self.port = free_port()
        self._base = os.path.join(directory, "redis-callgrind.out")
        self._dumps = 0
        command = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={self._base}",
            server, "--bind", HOST, "--port", str(self.port),
            "--save", "", "--appendonly", "no", "--dir", directory,
            # Its timer's work, counted with whatever batch it falls in, once a second.
            "--hz", "1", "--dynamic-hz", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            cwd=directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_port(self.port, START_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def mark(self) -> int:
        """Instructions the server ran since the last mark (or since it started)."""
        subprocess.run(
            ["callgrind_control", "--dump", str(self.process.pid)],
            check=True,
            capture_output=True,
            timeout=DUMP_TIMEOUT,
        )
        self._dumps += 1
        path = f"{self._base}.{self._dumps}"
        deadline = time.monotonic() + DUMP_TIMEOUT
        while time.monotonic() < deadline:
            if os.path.exists(path):
                with open(path) as f:
                    match = _TOTALS.search(f.read())
                if match is not None:
                    return int(match.group(1))
            time.sleep(0.05)
        raise RuntimeError(f"callgrind wrote no totals to {path} within {DUMP_TIMEOUT:.0f} s")

    def idle(self, seconds: float = 2.0) -> float:
        """Instructions per second the server runs with nothing to do."""
        self.mark()
        time.sleep(seconds)
        return self.mark() / seconds

    def count(self, requests: int, run: t.Callable[[], object], idle: float = 0.0) -> float:
        """Instructions per call of ``run``, over ``requests`` calls, less ``idle``
        instructions per second of the batch's duration."""
        self.mark()
        start = time.monotonic()
        for _ in range(requests):
            run()
        elapsed = time.monotonic() - start
        return (self.mark() - idle * elapsed) / requests

    def stop(self) -> None:
        end_process(self.process)
        for path in glob.glob(glob.escape(self._base) + "*"):
            os.remove(path)
