"""CPU instructions per request with encryption at rest on and off, counted by callgrind.

Usage: python benchmarks/encryption.py [N]

Runs ours on SQLite and on Redis (a redis-server it starts on loopback),
each without ``SERVERSESSION_ENCRYPTION_KEY`` and with one, through the
instructions section's counter: ``(total(5N) - total(N)) / 4N`` per request
(N = 20 unless given), for the ``read``, ``write`` and ``new`` scenarios.
The Redis server's own work is not counted.
"""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile

from apps import Spec
from instructions import Contender
from instructions import count
from instructions import kilo
from servers import RedisServer
from stats import table

SCENARIOS = ("read", "write", "new")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed")
    key = {"SERVERSESSION_ENCRYPTION_KEY": secrets.token_hex(32)}
    directory = tempfile.mkdtemp(prefix="bench-encryption-")
    redis = RedisServer()
    try:
        rows = []
        for backend, location, prefix in (
            ("sqlite", f"sqlite:///{directory}/plain.sqlite", ""),
            ("redis", redis.url(0), "plain:"),
        ):
            plain = Spec("fss", backend, location, prefix)
            sealed_location = location.replace("plain", "sealed")
            sealed = Spec("fss", backend, sealed_location, prefix.replace("plain", "sealed"), key)
            off = count(Contender(plain), n, directory)
            on = count(Contender(sealed), n, directory)
            cells = [f"{kilo(off[s])} / {kilo(on[s])} = {on[s] / off[s]:.2f}x" for s in SCENARIOS]
            rows.append((backend, *cells))
        title = (
            "Instructions per request, thousands: encryption off / on"
            f" (callgrind: (total(5N) - total(N)) / 4N, N = {n})"
        )
        print(table(title, ("backend", *SCENARIOS), rows))
    finally:
        redis.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
