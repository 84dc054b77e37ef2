"""Where a request's time goes: py-spy samples of the read and write paths, by layer.

Each backend's app runs in its own process (``profiled.py``) under
``py-spy record --native --idle``, so samples include C frames (the SQLite
engine, libpq, system calls) and time spent waiting on a socket. On a loaded
machine a ``send`` on loopback often wakes the server at once and lets it
run before the sender resumes, so ``send`` time includes some server time.
py-spy pauses the process for each native sample while the servers keep
working, so waits on a server are under-counted: the floors of the micro
section measure storage time; this profile shows where the Python side goes. Only
samples taken inside the timed loop count. Each sample goes to the first
category below that it matches; the shares add up to 100%.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import tempfile
import typing as t
from dataclasses import dataclass

from lineup import available
from lineup import note
from lineup import Places
from stats import load
from stats import table
from stats import wait_for_quiet

BACKENDS = ("sqlite", "postgres", "redis", "filesystem")
SCENARIOS = ("read", "write")
RATE = 400
TOP = 12

#: Library file prefixes as py-spy prints them; other files count as the standard library.
PACKAGES = (
    "flask_serversession/",
    "flask/",
    "werkzeug/",
    "sqlalchemy/",
    "psycopg/",
    "redis/",
    "itsdangerous/",
    "blinker/",
    "markupsafe/",
    "json/",
)
HARNESS = ("profiled.py", "apps.py")
FILESYSTEM_BACKEND = ("flask_serversession/backends/filesystem/",)
SOCKET_WAIT = {"recv", "recvfrom", "__libc_recv", "poll", "__poll", "ppoll", "select", "epoll_wait"}
SOCKET_SEND = {"send", "sendto", "__libc_send", "sendmsg", "__send"}
FSYNC = {"fsync", "fdatasync", "__libc_fsync", "__fsync", "__fdatasync"}

#: The categories, in the order of the rules that assign them.
CATEGORIES = (
    "socket: waiting for the server (recv/poll)",
    "socket: send (on loopback, often the server running)",
    "fsync",
    "other system calls, libc (open, rename, locks...)",
    "SQLite engine (C)",
    "psycopg / libpq (C and Python)",
    "SQLAlchemy pool checkout/return",
    "SQLAlchemy compile + cache key",
    "SQL statement building (constructs)",
    "SQLAlchemy execution + results",
    "redis-py client (packing, parsing)",
    "serialization (tagged JSON, json)",
    "filesystem backend (Python)",
    "our session layer (interface, store, backends)",
    "token signing (itsdangerous, hmac)",
    "Flask + Werkzeug",
    "other (stdlib, interpreter)",
)


@dataclass(frozen=True)
class Frame:
    function: str
    file: str

    @property
    def native(self) -> bool:
        return ".so" in self.file

    @property
    def library(self) -> bool:
        return self.file.startswith(PACKAGES) or self.file in HARNESS


def parse_frame(text: str) -> Frame:
    function, _, rest = text.rpartition(" (")
    if not function:
        return Frame(text, "")
    file = rest.rstrip(")").rsplit(":", 1)[0]
    return Frame(function, file)


def _native_category(frames: t.Sequence[Frame]) -> str | None:
    """The category of the C code a sample is in, if it is in a library we name."""
    for frame in reversed(frames):
        if not frame.native:
            return None
        name = frame.function
        if "libsqlite3" in frame.file or "_sqlite3" in frame.file:
            return "SQLite engine (C)"
        if "libpq" in frame.file or "psycopg" in frame.file:
            return "psycopg / libpq (C and Python)"
        if "libc.so" in frame.file:
            if name in SOCKET_WAIT:
                return CATEGORIES[0]
            if name in SOCKET_SEND:
                return CATEGORIES[1]
            if name in FSYNC:
                return "fsync"
    return None


def _syscall(frames: t.Sequence[Frame]) -> bool:
    """A leaf in libc: a system call, or C library code (an address where no symbol is known)."""
    leaf = frames[-1]
    return leaf.native and "libc.so" in leaf.file


def categorize(frames: t.Sequence[Frame]) -> str:
    """Return the category of one sample, its frames listed from the root to the leaf."""
    # A socket wait or fsync at the leaf counts as such, even below the SQLite engine or libpq.
    native = _native_category(frames)
    if native is not None:
        return native
    sqlite_below = any("libsqlite3" in f.file or "_sqlite3" in f.file for f in frames)
    if sqlite_below:
        return "SQLite engine (C)"
    if _syscall(frames):
        return "other system calls, libc (open, rename, locks...)"
    python = [f for f in frames if not f.native]
    files = [f.file for f in python]
    if any(f.startswith("psycopg/") for f in files):
        return "psycopg / libpq (C and Python)"
    if any(f.startswith("sqlalchemy/pool/") for f in files):
        return "SQLAlchemy pool checkout/return"
    if any(
        f.file in ("sqlalchemy/sql/compiler.py", "sqlalchemy/sql/cache_key.py")
        or f.function.endswith("_compile_w_cache")
        for f in python
    ):
        return "SQLAlchemy compile + cache key"
    outermost = next((f for f in python if f.file.startswith("sqlalchemy/")), None)
    if outermost is not None:
        if outermost.file.startswith("sqlalchemy/sql/") and "execute" not in outermost.function:
            return "SQL statement building (constructs)"
        return "SQLAlchemy execution + results"
    if any(f.startswith("redis/") for f in files):
        return "redis-py client (packing, parsing)"
    if any(f.endswith("serialization.py") or f.startswith("json/") for f in files):
        return "serialization (tagged JSON, json)"
    if any(f.startswith("itsdangerous/") or f == "hmac.py" for f in files):
        return "token signing (itsdangerous, hmac)"
    owner = next((f for f in reversed(python) if f.library), None)
    if owner is None:
        return "other (stdlib, interpreter)"
    if owner.file.startswith(FILESYSTEM_BACKEND):
        return "filesystem backend (Python)"
    if owner.file.startswith("flask_serversession/"):
        return "our session layer (interface, store, backends)"
    return "Flask + Werkzeug"


@dataclass
class Profile:
    samples: int
    categories: collections.Counter[str]
    ours: collections.Counter[str]
    leaves: collections.Counter[str]


def analyse(path: str) -> Profile:
    """Read py-spy's raw (collapsed) output; keep the samples of the timed loop."""
    categories: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    samples = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            frames = [parse_frame(text) for text in stack.split(";")]
            if not any(fr.function == "timed" and fr.file == "profiled.py" for fr in frames):
                continue
            n = int(count)
            samples += n
            categories[categorize(frames)] += n
            for name in {
                f"{fr.function} ({fr.file.removeprefix('flask_serversession/')})"
                for fr in frames
                if fr.file.startswith("flask_serversession/")
            }:
                ours[name] += n
            leaf = next((fr for fr in reversed(frames) if fr.library or fr.native), frames[-1])
            leaves[f"{leaf.function} ({leaf.file})"] += n
    return Profile(samples, categories, ours, leaves)


def record(spec_json: str, scenario: str, seconds: float, output: str) -> None:
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiled.py")
    argv = [
        "py-spy", "record", "--native", "--idle", "--rate", str(RATE),
        "--format", "raw", "--output", output, "--",
        sys.executable, script, spec_json, scenario, str(seconds), "200000",
    ]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True, timeout=seconds + 120)


def share(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%" if total else "-"


def render(backend: str, profiles: t.Mapping[str, Profile]) -> str:
    used = [c for c in CATEGORIES if any(p.categories[c] for p in profiles.values())]
    rows = [(c, *(share(p.categories[c], p.samples) for p in profiles.values())) for c in used]
    rows.append(("samples", *(str(p.samples) for p in profiles.values())))
    title = f"Profile: {backend}, share of request time by layer (py-spy --native --idle)"
    parts = [table(title, ("category", *profiles), rows)]
    for scenario, p in profiles.items():
        tops = [(name, share(n, p.samples)) for name, n in p.ours.most_common(TOP)]
        leaves = [(name, share(n, p.samples)) for name, n in p.leaves.most_common(TOP)]
        headers = ("function", "share")
        parts.append(table(f"{backend} {scenario}: our functions, inclusive", headers, tops))
        parts.append(table(f"{backend} {scenario}: hottest leaves (self)", headers, leaves))
    return "\n".join(parts)


def run(places: Places, backends: t.Sequence[str], *, quick: bool = False) -> None:
    if shutil.which("py-spy") is None:
        note("the profile section is skipped: py-spy is not installed (pip install py-spy).")
        return
    seconds = 2.0 if quick else 5.0
    directory = tempfile.mkdtemp(prefix="profile-", dir=places.directory)
    for backend in [b for b in BACKENDS if b in backends]:
        reason = available(places, "fss", backend)
        if reason is not None:
            note(f"profiling {backend} is skipped: {reason}.")
            continue
        spec = places.spec("fss", backend, "prof", redis_db=20)
        profiles = {}
        wait_for_quiet(f"profile {backend}")
        before = load()
        for scenario in SCENARIOS:
            output = os.path.join(directory, f"{backend}-{scenario}.txt")
            try:
                record(spec.to_json(), scenario, seconds, output)
            except (subprocess.SubprocessError, OSError) as e:
                note(f"profiling {backend} {scenario} failed: {type(e).__name__}: {e}")
                continue
            profiles[scenario] = analyse(output)
        if profiles:
            print(f"({before} before, {load()} after)")
            print(render(backend, profiles), flush=True)
