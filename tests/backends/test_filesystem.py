from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import typing as t
import zlib
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from pathlib import Path

import pytest
from flask import Flask

from flask_serversession.backend_config import build_backend
from flask_serversession.backends.base import CorruptRecordError
from flask_serversession.backends.base import data_size
from flask_serversession.backends.base import Delta
from flask_serversession.backends.base import Record
from flask_serversession.backends.filesystem import FileSystemBackend
from flask_serversession.config import read_settings
from flask_serversession.errors import BackendError
from flask_serversession.errors import ConfigError
from flask_serversession.errors import SessionTooLargeError

NOW = datetime.now(timezone.utc).replace(microsecond=0)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
REPO = Path(__file__).resolve().parents[2]


def key_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def record(data: dict[str, str], *, expires_in: timedelta = HOUR) -> Record:
    return Record(data, NOW, NOW + expires_in)


def path_of(root: Path, key: str) -> Path:
    return root / key[:2] / key


def age(path: Path, by: timedelta) -> None:
    """Set the lstat mtime of ``path`` to ``by`` before NOW, never following a link."""
    stamp = (NOW - by).timestamp()
    os.utime(path, (stamp, stamp), follow_symlinks=False)


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(FileSystemBackend.temp_prefix)]


def test_creates_private_directories_and_files(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    backend = FileSystemBackend(root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    key = key_of("a")
    backend.create(key, record({"k": "1"}))
    path = path_of(root, key)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((path.parent / ".lock").stat().st_mode) == 0o600


def test_sharded_layout(fs: FileSystemBackend, root: Path) -> None:
    keys = [key_of(str(i)) for i in range(20)]
    for key in keys:
        fs.create(key, record({"k": "1"}))
    assert sorted(p.name for p in root.iterdir()) == sorted({k[:2] for k in keys})
    for shard in root.iterdir():
        names = {p.name for p in shard.iterdir()}
        assert names == {".lock"} | {k for k in keys if k[:2] == shard.name}


def test_round_trip_keeps_microseconds_and_gives_utc(fs: FileSystemBackend) -> None:
    created = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    fs.create(key_of("a"), Record({"x": '"✓"'}, created, created + HOUR))
    loaded = fs.load(key_of("a"))
    assert loaded is not None
    assert loaded.created_at == created
    assert loaded.expires_at == created + HOUR
    assert loaded.created_at.tzinfo == timezone.utc
    assert loaded.data == {"x": '"✓"'}


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a" * 63,
        "a" * 65,
        "A" * 64,
        "a" * 64 + "\n",
        "../" + "a" * 61,
        "aa/" + "a" * 61,
        "/etc/passwd",
        "g" * 64,
        ".lock",
    ],
)
def test_key_that_is_not_a_sha256_hex_digest_is_refused(
    fs: FileSystemBackend, root: Path, bad: str
) -> None:
    assert fs.load(bad) is None
    assert fs.update(bad, Delta(NOW + HOUR, {"k": "1"}), NOW) is False
    assert fs.touch(bad, NOW + HOUR, NOW) is False
    fs.delete(bad)
    with pytest.raises(ValueError, match="storage key"):
        fs.create(bad, record({"k": "1"}))
    assert list(root.iterdir()) == []


def test_lookups_of_unknown_keys_create_nothing(fs: FileSystemBackend, root: Path) -> None:
    key = key_of("nobody")
    assert fs.load(key) is None
    assert fs.update(key, Delta(NOW + HOUR), NOW) is False
    fs.delete(key)
    assert fs.purge_expired(NOW) == 0
    assert list(root.iterdir()) == []


def test_save_replaces_the_file_instead_of_writing_into_it(
    fs: FileSystemBackend, root: Path
) -> None:
    key = key_of("a")
    fs.create(key, record({"k": "old"}))
    path = path_of(root, key)
    with path.open("rb") as before:
        inode = os.fstat(before.fileno()).st_ino
        assert fs.update(key, Delta(NOW + HOUR, {"k": "new"}), NOW)
        old_content = before.read()
    assert path.stat().st_ino != inode
    assert b'"old"' in old_content
    loaded = fs.load(key)
    assert loaded is not None and loaded.data == {"k": "new"}


def test_writes_leave_no_temp_files(fs: FileSystemBackend, root: Path) -> None:
    for i in range(30):
        fs.create(key_of(str(i)), record({"k": str(i)}))
        fs.update(key_of(str(i)), Delta(NOW + 2 * HOUR, {"j": "2"}), NOW)
        fs.touch(key_of(str(i)), NOW + 3 * HOUR, NOW)
    assert temp_files(root) == []


def test_threads_updating_own_keys_lose_nothing(fs: FileSystemBackend) -> None:
    key = key_of("shared")
    fs.create(key, record({}))
    threads, rounds = 8, 50
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(rounds):
                assert fs.update(key, Delta(NOW + HOUR, {f"t{n}": str(i), f"t{n}-{i}": "1"}), NOW)
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    loaded = fs.load(key)
    assert loaded is not None
    expected = {f"t{n}": str(rounds - 1) for n in range(threads)}
    expected.update({f"t{n}-{i}": "1" for n in range(threads) for i in range(rounds)})
    assert loaded.data == expected


def _process_writer(directory: str, key: str, n: int, rounds: int) -> None:
    backend = FileSystemBackend(directory)
    for i in range(rounds):
        if not backend.update(key, Delta(NOW + HOUR, {f"p{n}": str(i), f"p{n}-{i}": "1"}), NOW):
            raise AssertionError(f"update {i} of process {n} found no session")


def test_processes_updating_own_keys_lose_nothing(fs: FileSystemBackend, root: Path) -> None:
    key = key_of("shared")
    fs.create(key, record({"start": "1"}))
    processes, rounds = 4, 60
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_process_writer, args=(str(root), key, n, rounds))
        for n in range(processes)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0] * processes
    loaded = fs.load(key)
    assert loaded is not None
    expected = {"start": "1", **{f"p{n}": str(rounds - 1) for n in range(processes)}}
    expected.update({f"p{n}-{i}": "1" for n in range(processes) for i in range(rounds)})
    assert loaded.data == expected


CRASH_CHILD = """
import sys
from datetime import datetime, timedelta, timezone
from flask_serversession.backends.base import Delta, Record
from flask_serversession.backends.filesystem import FileSystemBackend

backend = FileSystemBackend(sys.argv[1])
now = datetime.now(timezone.utc)
keys = [format(i, "02x") * 32 for i in range(4)]
big = '"' + "x" * 200_000 + '"'
i = 0
while True:
    key = keys[i % len(keys)]
    backend.create(key, Record({"n": str(i), "big": big}, now, now + timedelta(hours=1)))
    backend.update(key, Delta(now + timedelta(hours=2), {"m": str(i)}), now)
    if i == 0:
        print("ready", flush=True)
    i += 1
"""


def test_killed_writer_leaves_only_whole_files(fs: FileSystemBackend, root: Path) -> None:
    for attempt in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", CRASH_CHILD, str(root)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        time.sleep(0.05 + 0.04 * attempt)
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL
        sessions = [p for p in root.glob("*/*") if len(p.name) == 64]
        assert sessions
        for path in sessions:
            loaded = fs.load(path.name)
            assert loaded is not None
            assert len(loaded.data["big"]) == 200_002
        assert fs.count(NOW) == len(sessions)
        assert len(list(fs.items(NOW))) == len(sessions)

    assert fs.purge_expired(NOW) == 0
    assert temp_files(root) == []
    assert fs.count(NOW) == len(sessions)


def test_stray_temp_file_is_ignored_then_purged(fs: FileSystemBackend, root: Path) -> None:
    key = key_of("a")
    fs.create(key, record({"k": "1"}))
    stray = path_of(root, key).parent / f"{FileSystemBackend.temp_prefix}crashed.part"
    stray.write_bytes(path_of(root, key).read_bytes()[:10])
    assert fs.count(NOW) == 1
    assert [k for k, _ in fs.items(NOW)] == [key]
    assert fs.purge_expired(NOW) == 0
    assert not stray.exists()
    assert fs.load(key) is not None


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b[:10], id="truncated-header"),
        pytest.param(lambda b: b[:-3], id="truncated-body"),
        pytest.param(lambda b: b"XXXX" + b[4:], id="bad-magic"),
        pytest.param(lambda b: b[:4] + bytes([b[4] ^ 1]) + b[5:], id="flipped-time"),
        pytest.param(lambda b: b[:-2] + b"!}", id="flipped-body"),
        pytest.param(lambda b: os.urandom(200), id="garbage"),
    ],
)
def test_corrupt_file_raises_and_is_skipped(
    fs: FileSystemBackend,
    root: Path,
    damage: t.Callable[[bytes], bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad, good = key_of("bad"), key_of("good")
    fs.create(bad, record({"k": '"value"'}))
    fs.create(good, record({"k": "1"}))
    path = path_of(root, bad)
    damaged = damage(path.read_bytes())
    path.write_bytes(damaged)
    with pytest.raises(CorruptRecordError):
        fs.load(bad)
    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        assert [k for k, _ in fs.items(NOW)] == [good]
        assert fs.update(bad, Delta(NOW + HOUR, {"k": "2"}), NOW) is False
    assert sum(bad in r.getMessage() for r in caplog.records) == 2
    # Purge trusts a readable header's expiry; a file without one stays while
    # a save could have written it recently enough to be live.
    header_ok = len(damaged) >= 24 and damaged.startswith(FileSystemBackend.magic)
    assert fs.purge_expired(NOW + 2 * HOUR) == 1 + header_ok
    assert path.exists() is not header_ok
    if not header_ok:
        assert fs.purge_expired(NOW + 2 * HOUR, longest_lifetime=DAY) == 0
        age(path, 2 * DAY)
        assert fs.purge_expired(NOW + 2 * HOUR, longest_lifetime=DAY) == 1
        assert not path.exists()


@pytest.mark.parametrize(
    "body",
    [b"[1, 2]", b'{"k": 1}', b"\xff\xfe", b'{"k": "v"'],
    ids=["list", "non-string", "not-utf8", "unclosed"],
)
def test_well_framed_but_invalid_body_is_corrupt(
    fs: FileSystemBackend, root: Path, body: bytes
) -> None:
    import struct
    import zlib

    key = key_of("a")
    fs.create(key, record({}))
    path = path_of(root, key)
    times = path.read_bytes()[4:20]
    header = FileSystemBackend.magic + times + struct.pack(">I", zlib.crc32(times + body))
    path.write_bytes(header + body)
    with pytest.raises(CorruptRecordError):
        fs.load(key)


def test_directory_where_a_session_file_should_be(fs: FileSystemBackend, root: Path) -> None:
    key = key_of("a")
    fs.create(key_of("b" * 3), record({}))
    path = path_of(root, key)
    path.parent.mkdir(exist_ok=True)
    path.mkdir()
    with pytest.raises(CorruptRecordError, match="not a regular file"):
        fs.load(key)
    assert fs.update(key, Delta(NOW + HOUR, {"k": "1"}), NOW) is False
    assert fs.count(NOW) == 1
    assert [k for k, _ in fs.items(NOW)] == [key_of("b" * 3)]
    with pytest.raises(BackendError):
        fs.create(key, record({"k": "1"}))
    assert path.is_dir()
    assert temp_files(root) == []
    assert fs.purge_expired(NOW + 2 * HOUR) == 1
    assert path.is_dir()
    fs.delete(key)
    assert not path.exists()
    fs.create(key, record({"k": "1"}))
    loaded = fs.load(key)
    assert loaded is not None and loaded.data == {"k": "1"}


def test_planted_symlink_is_never_followed(
    fs: FileSystemBackend, root: Path, tmp_path: Path
) -> None:
    key, donor = key_of("a"), key_of("donor")
    fs.create(donor, record({"stolen": '"secret"'}))
    outside = tmp_path / "outside"
    outside.write_bytes(path_of(root, donor).read_bytes())
    original = outside.read_bytes()
    path = path_of(root, key)
    path.parent.mkdir(exist_ok=True)
    path.symlink_to(outside)

    with pytest.raises(CorruptRecordError, match="symbolic link"):
        fs.load(key)
    assert fs.update(key, Delta(NOW + HOUR, {"k": "1"}), NOW) is False
    assert fs.touch(key, NOW + 5 * HOUR, NOW) is False
    assert fs.count(NOW) == 1
    assert [k for k, _ in fs.items(NOW)] == [donor]

    fs.create(key, record({"k": "mine"}))
    assert not path.is_symlink()
    assert outside.read_bytes() == original
    loaded = fs.load(key)
    assert loaded is not None and loaded.data == {"k": "mine"}

    path.unlink()
    path.symlink_to(outside)
    fs.delete(key)
    assert not path.is_symlink() and outside.read_bytes() == original


def test_purge_removes_only_expired_sessions_and_leftovers(
    fs: FileSystemBackend, root: Path
) -> None:
    for i in range(10):
        fs.create(key_of(f"live{i}"), record({"i": str(i)}))
    for i in range(7):
        fs.create(key_of(f"dead{i}"), record({"i": str(i)}, expires_in=-HOUR))
    fs.create(key_of("edge"), record({}, expires_in=timedelta(0)))
    shard = path_of(root, key_of("live0")).parent
    (shard / f"{FileSystemBackend.temp_prefix}x.part").write_bytes(b"half")
    (shard / "README").write_bytes(b"not ours")

    assert fs.count(NOW) == 10
    assert fs.purge_expired(NOW) == 8
    assert fs.purge_expired(NOW) == 0
    assert fs.count(NOW) == 10
    assert {k for k, _ in fs.items(NOW)} == {key_of(f"live{i}") for i in range(10)}
    assert all(fs.load(key_of(f"dead{i}")) is None for i in range(7))
    assert temp_files(root) == []
    assert (shard / "README").exists() and (shard / ".lock").exists()


def test_clear_counts_sessions_and_removes_leftovers(fs: FileSystemBackend, root: Path) -> None:
    for i in range(6):
        fs.create(key_of(str(i)), record({}, expires_in=HOUR if i % 2 else -HOUR))
    (path_of(root, key_of("0")).parent / f"{FileSystemBackend.temp_prefix}x.part").touch()
    assert fs.clear() == 6
    assert fs.count(NOW) == 0
    assert [p for p in root.rglob("*") if p.is_file() and p.name != ".lock"] == []


def test_backends_on_one_directory_share_sessions(fs: FileSystemBackend, root: Path) -> None:
    other = FileSystemBackend(root)
    fs.create(key_of("a"), record({"k": "1"}))
    assert other.update(key_of("a"), Delta(NOW + HOUR, {"j": "2"}), NOW)
    loaded = fs.load(key_of("a"))
    assert loaded is not None and loaded.data == {"k": "1", "j": "2"}
    other.delete(key_of("a"))
    assert fs.load(key_of("a")) is None


def _unusable_dirs(tmp_path: Path) -> list[Path]:
    regular = tmp_path / "regular-file"
    regular.write_text("x")
    return [regular, regular / "sessions", Path("/proc/serversession")]


def test_unusable_directory_fails_in_constructor(tmp_path: Path) -> None:
    for directory in _unusable_dirs(tmp_path):
        with pytest.raises(OSError):
            FileSystemBackend(directory)


def test_unusable_directory_is_a_config_error(tmp_path: Path) -> None:
    for directory in _unusable_dirs(tmp_path):
        app = Flask(__name__, instance_path=str(tmp_path / "instance"))
        app.config.update(SERVERSESSION_BACKEND="filesystem", SERVERSESSION_FILE_DIR=directory)
        read_settings(app)
        with pytest.raises(ConfigError, match="SERVERSESSION_FILE_DIR"):
            build_backend(app)


def test_default_directory_is_under_instance_path(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(SERVERSESSION_BACKEND="filesystem", SERVERSESSION_FILE_DIR=None)
    read_settings(app)
    backend = build_backend(app)
    assert isinstance(backend, FileSystemBackend)
    assert backend.directory == str(tmp_path / "instance" / "serversession")
    assert os.path.isdir(backend.directory)


# Durability: whether saves call os.fsync.


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record what each real os.fsync call from now on flushes: "dir" or "file"."""
    calls: list[str] = []
    real = os.fsync

    def counting(fd: t.Any) -> None:
        calls.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_saves_never_fsync_by_default(root: Path, fsyncs: list[str]) -> None:
    fs = FileSystemBackend(root)
    assert fs.fsync is False
    key = key_of("a")
    fs.create(key, record({"k": '"v"'}))
    assert fs.update(key, Delta(NOW + HOUR, {"k": '"w"'}), NOW)
    # Signing in writes the user's index entry and its new directories.
    assert fs.update(key, Delta(NOW + HOUR, user="alice", user_changed=True), NOW)
    fs.create(key_of("b"), of_user({}, "bob"))
    assert fsyncs == []
    # Nothing was given up but the flushing: every save is there and indexed.
    assert fs.load(key) == of_user({"k": '"w"'}, "alice")
    assert listed(fs, "alice") == {key} and listed(fs, "bob") == {key_of("b")}


def test_fsync_flushes_every_save(root: Path, fsyncs: list[str]) -> None:
    fs = FileSystemBackend(root, fsync=True)
    key = key_of("a")
    fs.create(key, record({"k": '"v"'}))
    assert fsyncs == ["file"]  # The session file, before its rename.
    assert fs.update(key, Delta(NOW + HOUR, {"k": '"w"'}), NOW)
    assert fsyncs == ["file", "file"]


def test_fsync_flushes_the_user_index_before_the_session(root: Path, fsyncs: list[str]) -> None:
    fs = FileSystemBackend(root, fsync=True)
    key = key_of("a")
    fs.create(key, of_user({}, "alice"))
    # users/, users/<h[:2]>/ and users/<h>/ are new (three parent fsyncs),
    # then the marker's directory, then the session file.
    assert fsyncs == ["dir"] * 4 + ["file"]
    fsyncs.clear()
    # A second session of the same user: its marker, then its file.
    fs.create(key_of("b"), of_user({}, "alice"))
    assert fsyncs == ["dir", "file"]
    fsyncs.clear()
    # A save that keeps its user finds the marker there: only the file.
    assert fs.update(key, Delta(NOW + HOUR, {"k": '"v"'}), NOW)
    assert fsyncs == ["file"]
    assert listed(fs, "alice") == {key, key_of("b")}


@pytest.mark.parametrize("value", [False, True])
def test_fsync_is_configured_by_a_key(tmp_path: Path, fsyncs: list[str], value: bool) -> None:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(SERVERSESSION_BACKEND="filesystem", SERVERSESSION_FILE_FSYNC=value)
    read_settings(app)
    backend = build_backend(app)
    assert isinstance(backend, FileSystemBackend) and backend.fsync is value
    backend.create(key_of("a"), record({}))
    assert len(fsyncs) == int(value)


def test_fsync_is_off_unless_configured(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(SERVERSESSION_BACKEND="filesystem")
    read_settings(app)
    backend = build_backend(app)
    assert isinstance(backend, FileSystemBackend) and backend.fsync is False


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_fsync_key_must_be_a_bool(tmp_path: Path, value: object) -> None:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    app.config.update(SERVERSESSION_BACKEND="filesystem", SERVERSESSION_FILE_FSYNC=value)
    read_settings(app)
    with pytest.raises(ConfigError, match=f"SERVERSESSION_FILE_FSYNC = {value!r} is not valid"):
        build_backend(app)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> t.Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
    )
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_keeps_the_previous_file(tiny_disk: Path) -> None:
    fs = FileSystemBackend(tiny_disk / "sessions")
    key = key_of("a")
    fs.create(key, record({"k": '"small"'}))
    big = '"' + "x" * 100_000 + '"'
    with pytest.raises(BackendError, match="No space left"):
        fs.create(key, record({"k": big}))
    with pytest.raises(BackendError, match="No space left"):
        fs.update(key, Delta(NOW + HOUR, {"k": big}), NOW)
    loaded = fs.load(key)
    assert loaded is not None and loaded.data == {"k": '"small"'}
    assert temp_files(tiny_disk) == []


FSIZE_CHILD = """
import resource, signal, sys
from datetime import datetime, timedelta, timezone
from flask_serversession.backends.base import Delta, Record
from flask_serversession.backends.filesystem import FileSystemBackend
from flask_serversession.errors import BackendError

backend = FileSystemBackend(sys.argv[1])
now = datetime.now(timezone.utc)
key = "ab" * 32
backend.create(key, Record({"k": '"small"'}, now, now + timedelta(hours=1)))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
big = '"' + "x" * 100_000 + '"'
for save in (
    lambda: backend.create(key, Record({"k": big}, now, now + timedelta(hours=1))),
    lambda: backend.update(key, Delta(now + timedelta(hours=1), {"k": big}), now),
):
    try:
        save()
    except BackendError as e:
        print("BackendError", e.__cause__.__class__.__name__, e.__cause__.errno)
    else:
        print("saved")
"""


def test_file_size_limit_keeps_the_previous_file(fs: FileSystemBackend, root: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FSIZE_CHILD), str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["BackendError OSError 27"] * 2
    loaded = fs.load("ab" * 32)
    assert loaded is not None and loaded.data == {"k": '"small"'}
    assert temp_files(root) == []


# take()


def test_take_returns_the_record_and_removes_it(fs: FileSystemBackend, root: Path) -> None:
    key = key_of("a")
    fs.create(key, record({"k": '"v"'}))
    taken = fs.take(key, NOW)
    assert taken is not None and taken.data == {"k": '"v"'}
    assert taken.expires_at == NOW + HOUR
    assert not path_of(root, key).exists()
    assert fs.load(key) is None
    assert fs.take(key, NOW) is None
    assert fs.update(key, Delta(NOW + HOUR, {"k": "1"}), NOW) is False


def test_take_of_an_expired_record_removes_it_and_returns_none(
    fs: FileSystemBackend, root: Path
) -> None:
    key = key_of("a")
    fs.create(key, record({"k": "1"}, expires_in=timedelta(0)))
    assert fs.take(key, NOW) is None
    assert not path_of(root, key).exists()


def test_take_of_unknown_or_invalid_keys_creates_nothing(fs: FileSystemBackend, root: Path) -> None:
    assert fs.take(key_of("nobody"), NOW) is None
    assert fs.take("../" + "a" * 61, NOW) is None
    assert list(root.iterdir()) == []


def together(*calls: t.Callable[[], object]) -> list[object]:
    """Run ``calls`` in threads released at one moment; return results or errors in order."""
    start = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(n: int) -> None:
        start.wait(5)
        try:
            results[n] = calls[n]()
        except Exception as e:
            results[n] = e

    workers = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for w in workers:
        w.start()
    for w in workers:
        w.join(10)
    assert not any(w.is_alive() for w in workers)
    return results


def test_take_is_atomic_between_threads(fs: FileSystemBackend) -> None:
    key = key_of("a")
    for attempt in range(20):
        fs.create(key, record({"n": str(attempt)}))
        taken = together(*[lambda: fs.take(key, NOW)] * 4)
        winners = [r for r in taken if r is not None]
        assert [r.data for r in winners if isinstance(r, Record)] == [{"n": str(attempt)}]
        assert len(winners) == 1


# The size limit.


def big(n: int) -> str:
    return '"' + "x" * n + '"'


def test_update_past_max_size_raises_and_writes_nothing(fs: FileSystemBackend, root: Path) -> None:
    key = key_of("a")
    fs.create(key, record({"a": big(100)}))
    path = path_of(root, key)
    before = path.read_bytes()
    inode = path.stat().st_ino
    with pytest.raises(SessionTooLargeError, match="SERVERSESSION_MAX_SIZE"):
        fs.update(key, Delta(NOW + 2 * HOUR, {"b": big(100)}, max_size=150), NOW)
    assert path.read_bytes() == before
    assert path.stat().st_ino == inode
    assert temp_files(root) == []
    # A delta that fits, or that shrinks a session already over the limit, is saved.
    assert fs.update(key, Delta(NOW + HOUR, {"b": '"small"'}, max_size=150), NOW)
    assert fs.update(key, Delta(NOW + HOUR, {"b": '"tiny"'}, max_size=10), NOW)
    assert fs.update(key, Delta(NOW + 2 * HOUR, max_size=10), NOW)
    loaded = fs.load(key)
    assert loaded is not None and loaded.data == {"a": big(100), "b": '"tiny"'}


def test_concurrent_additions_cannot_pass_max_size_together(fs: FileSystemBackend) -> None:
    key = key_of("a")
    limit = 500
    for _attempt in range(10):
        fs.create(key, record({"base": big(100)}))
        outcomes = together(
            lambda: fs.update(key, Delta(NOW + HOUR, {"k1": big(250)}, max_size=limit), NOW),
            lambda: fs.update(key, Delta(NOW + HOUR, {"k2": big(250)}, max_size=limit), NOW),
        )
        assert outcomes.count(True) == 1
        assert sum(isinstance(o, SessionTooLargeError) for o in outcomes) == 1
        loaded = fs.load(key)
        assert loaded is not None and len(loaded.data) == 2
        assert data_size(loaded.data) <= limit


# Entries that are not session files.


def load_in_time(fs: FileSystemBackend, key: str) -> BaseException | Record | None:
    """Load ``key`` in a thread; fail instead of hanging if it blocks."""
    result: list[BaseException | Record | None] = []

    def run() -> None:
        try:
            result.append(fs.load(key))
        except BaseException as e:
            result.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    assert result, "load() blocked"
    return result[0]


def plant_fifo(path: Path, donor: bytes) -> None:
    os.mkfifo(path, 0o600)


def plant_symlink(path: Path, donor: bytes) -> None:
    outside = path.parents[2] / "outside-session"
    outside.write_bytes(donor)
    path.symlink_to(outside)


def plant_directory(path: Path, donor: bytes) -> None:
    path.mkdir()
    (path / "inner").write_bytes(donor)


def plant_socket(path: Path, donor: bytes) -> None:
    os.mknod(path, stat.S_IFSOCK | 0o600)


def plant_foreign_file(path: Path, donor: bytes) -> None:
    path.write_bytes(donor)
    os.chown(path, nobody(), -1)


def nobody() -> int:
    import pwd

    if os.geteuid() != 0:
        pytest.skip("needs root to give files to another user")
    return pwd.getpwnam("nobody").pw_uid


PLANTS = [
    pytest.param(plant_fifo, id="fifo"),
    pytest.param(plant_symlink, id="symlink"),
    pytest.param(plant_directory, id="directory"),
    pytest.param(plant_socket, id="socket"),
    pytest.param(plant_foreign_file, id="foreign-owned"),
]


@pytest.mark.parametrize("plant", PLANTS)
def test_planted_entry_is_corrupt_and_never_read(
    fs: FileSystemBackend,
    root: Path,
    plant: t.Callable[[Path, bytes], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    donor, key = key_of("donor"), key_of("a")
    fs.create(donor, record({"stolen": '"secret"'}))
    path = path_of(root, key)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    plant(path, path_of(root, donor).read_bytes())

    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        assert isinstance(load_in_time(fs, key), CorruptRecordError)
        assert fs.update(key, Delta(NOW + HOUR, {"k": "1"}), NOW) is False
        assert fs.count(NOW) == 1
        assert [k for k, _ in fs.items(NOW)] == [donor]
        assert fs.take(key, NOW) is None
    assert sum(key in r.getMessage() for r in caplog.records) == 3
    assert not os.path.lexists(path)
    assert (root.parent / "outside-session").exists() is (plant is plant_symlink)


@pytest.mark.parametrize("plant", PLANTS)
def test_delete_removes_a_planted_entry_without_following_it(
    fs: FileSystemBackend, root: Path, plant: t.Callable[[Path, bytes], None]
) -> None:
    donor, key = key_of("donor"), key_of("a")
    fs.create(donor, record({}))
    path = path_of(root, key)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    plant(path, path_of(root, donor).read_bytes())
    fs.delete(key)
    assert not os.path.lexists(path)
    assert fs.load(donor) is not None


# Purge of damaged entries.


@pytest.mark.parametrize(
    "plant",
    [
        *PLANTS,
        pytest.param(lambda p, d: p.write_bytes(d[:10]), id="truncated"),
        pytest.param(lambda p, d: p.write_bytes(b"XXXX" + d[4:]), id="bad-magic"),
        pytest.param(lambda p, d: p.write_bytes(b""), id="empty"),
    ],
)
def test_purge_removes_damaged_entries_once_older_than_any_lifetime(
    fs: FileSystemBackend, root: Path, plant: t.Callable[[Path, bytes], None]
) -> None:
    live, key = key_of("live"), key_of("a")
    fs.create(live, record({}, expires_in=30 * DAY))
    path = path_of(root, key)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    plant(path, path_of(root, live).read_bytes())
    age(path_of(root, live), 3 * DAY)

    assert fs.purge_expired(NOW) == 0
    assert fs.purge_expired(NOW, longest_lifetime=DAY) == 0
    assert os.path.lexists(path)
    age(path, 2 * DAY)
    assert fs.purge_expired(NOW) == 0
    assert fs.purge_expired(NOW, longest_lifetime=3 * DAY) == 0
    assert os.path.lexists(path)
    assert fs.purge_expired(NOW, longest_lifetime=DAY) == 1
    assert not os.path.lexists(path)
    assert fs.load(live) is not None
    assert (root.parent / "outside-session").exists() is (plant is plant_symlink)


def test_purge_never_follows_links_inside_a_planted_directory(
    fs: FileSystemBackend, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "keep").write_text("keep")
    key = key_of("a")
    path = path_of(root, key)
    (path / "sub").mkdir(parents=True)
    (path / "sub" / "link").symlink_to(outside)
    (path / "link").symlink_to(outside / "deep")
    (path / "file").write_text("x")
    for entry in [path, path / "sub", path / "sub" / "link", path / "link"]:
        age(entry, 2 * DAY)
    assert fs.purge_expired(NOW, longest_lifetime=DAY) == 1
    assert not os.path.lexists(path)
    assert (outside / "deep" / "keep").read_text() == "keep"


def test_purge_removes_records_with_an_impossible_expiry_only_if_damaged(
    fs: FileSystemBackend, root: Path
) -> None:
    good, bad = key_of("good"), key_of("bad")
    fs.create(good, record({"k": "1"}, expires_in=10 * DAY))
    fs.create(bad, record({"k": "1"}, expires_in=10 * DAY))
    path = path_of(root, bad)
    path.write_bytes(path.read_bytes()[:-2] + b"!}")
    assert fs.purge_expired(NOW) == 0
    assert fs.purge_expired(NOW, longest_lifetime=20 * DAY) == 0
    assert fs.purge_expired(NOW, longest_lifetime=DAY) == 1
    assert not path.exists()
    assert fs.load(good) is not None


# Trust in the directory.


def test_directory_writable_by_others_is_refused(tmp_path: Path) -> None:
    for mode in (0o777, 0o770, 0o722, 0o702):
        directory = tmp_path / f"shared-{mode:o}"
        directory.mkdir()
        directory.chmod(mode)
        with pytest.raises(PermissionError) as info:
            FileSystemBackend(directory)
        message = str(info.value)
        assert str(directory) in message
        assert f"{mode:04o}" in message
        assert f"uid {os.geteuid()}" in message
        assert "chmod 0700" in message
        assert list(directory.iterdir()) == []


def test_readable_directory_of_this_user_is_accepted(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    directory.mkdir()
    directory.chmod(0o755)
    FileSystemBackend(directory).create(key_of("a"), record({}))


def test_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    uid = nobody()
    directory = tmp_path / "theirs"
    directory.mkdir(mode=0o700)
    os.chown(directory, uid, -1)
    with pytest.raises(PermissionError, match=f"owned by uid {uid} with mode 0700") as info:
        FileSystemBackend(directory)
    assert str(directory) in str(info.value) and f"chown {os.geteuid()}" in str(info.value)
    assert list(directory.iterdir()) == []


def test_untrusted_directory_is_a_config_error(
    tmp_path: Path, make_app: t.Callable[..., Flask]
) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    directory.chmod(0o777)
    with pytest.raises(ConfigError, match="SERVERSESSION_FILE_DIR") as info:
        make_app(backend="filesystem", SERVERSESSION_FILE_DIR=str(directory))
    assert "mode 0777" in str(info.value) and str(directory) in str(info.value)


def test_directory_opened_up_later_fails_every_access(fs: FileSystemBackend, root: Path) -> None:
    fs.create(key_of("a"), record({}))
    root.chmod(0o777)
    for access in (
        lambda: fs.load(key_of("a")),
        lambda: fs.create(key_of("b"), record({})),
        lambda: fs.count(NOW),
        lambda: fs.purge_expired(NOW),
    ):
        with pytest.raises(BackendError, match="mode 0777"):
            access()
    root.chmod(0o700)
    assert fs.load(key_of("a")) is not None


def test_symlinked_shard_is_never_followed(
    fs: FileSystemBackend, root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key, donor = key_of("a"), key_of("donor")
    fs.create(donor, record({"stolen": '"secret"'}))
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    (outside / key).write_bytes(path_of(root, donor).read_bytes())
    (outside / ".lock").touch()
    shard = root / key[:2]
    if shard.exists():
        pytest.skip("the donor shares the shard")
    shard.symlink_to(outside)
    before = {p.name: p.read_bytes() for p in outside.iterdir()}

    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        with pytest.raises(CorruptRecordError, match="not a directory"):
            fs.load(key)
        assert fs.update(key, Delta(NOW + HOUR, {"k": "1"}), NOW) is False
        assert fs.take(key, NOW) is None
        fs.delete(key)
        assert fs.count(NOW) == 1
        assert [k for k, _ in fs.items(NOW)] == [donor]
        assert fs.purge_expired(NOW + 2 * HOUR) == 1
        assert fs.clear() == 0
        assert shard.is_symlink()
        # Creating a session there replaces the link by a private directory.
        fs.create(key, record({"k": '"mine"'}))
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before
    assert not shard.is_symlink() and shard.is_dir()
    assert stat.S_IMODE(shard.stat().st_mode) == 0o700
    loaded = fs.load(key)
    assert loaded is not None and loaded.data == {"k": '"mine"'}
    assert any("not a directory" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_non_directory_planted_as_a_shard_is_replaced(
    fs: FileSystemBackend, root: Path, kind: str
) -> None:
    key = key_of("a")
    shard = root / key[:2]
    if kind == "file":
        shard.write_bytes(b"x")
    else:
        os.mkfifo(shard)
    assert isinstance(load_in_time(fs, key), CorruptRecordError)
    fs.create(key, record({"k": "1"}))
    assert shard.is_dir() and fs.load(key) is not None


def test_planted_shard_is_purged_once_old(
    fs: FileSystemBackend, root: Path, tmp_path: Path
) -> None:
    shard = root / "ab"
    shard.symlink_to(tmp_path)
    assert fs.purge_expired(NOW, longest_lifetime=DAY) == 0
    assert shard.is_symlink()
    age(shard, 2 * DAY)
    assert fs.purge_expired(NOW) == 0
    assert shard.is_symlink()
    fs.purge_expired(NOW, longest_lifetime=DAY)
    assert not os.path.lexists(shard) and tmp_path.is_dir()


@pytest.mark.parametrize("problem", ["foreign", "writable"])
def test_untrusted_shard_holds_no_sessions(fs: FileSystemBackend, root: Path, problem: str) -> None:
    key = key_of("a")
    fs.create(key, record({"k": "1"}))
    shard = root / key[:2]
    if problem == "foreign":
        os.chown(shard, nobody(), -1)
    else:
        shard.chmod(0o777)
    with pytest.raises(CorruptRecordError, match="session shard"):
        fs.load(key)
    assert fs.update(key, Delta(NOW + HOUR, {"k": "2"}), NOW) is False
    assert fs.take(key, NOW) is None
    assert fs.count(NOW) == 0
    assert list(fs.items(NOW)) == []
    with pytest.raises(BackendError, match="chmod 0700"):
        fs.create(key_of("a"), record({"k": "3"}))
    assert path_of(root, key).exists()


# The user index.


def user_dir(root: Path, user: str) -> Path:
    digest = hashlib.sha256(user.encode()).hexdigest()
    return root / "users" / digest[:2] / digest


def markers(root: Path, user: str) -> set[str]:
    directory = user_dir(root, user)
    return {p.name for p in directory.iterdir()} if directory.is_dir() else set()


def of_user(data: dict[str, str], user: str | None, *, expires_in: timedelta = HOUR) -> Record:
    return Record(data, NOW, NOW + expires_in, user=user)


def listed(fs: FileSystemBackend, user: str, now: datetime = NOW) -> set[str]:
    records = fs.user_records(user, now)
    assert all(r.user == user and r.expires_at > now for _, r in records)
    assert len(records) == len({k for k, _ in records})
    return {k for k, _ in records}


def test_user_index_lists_a_users_sessions(fs: FileSystemBackend, root: Path) -> None:
    alice = [key_of(f"alice{i}") for i in range(3)]
    for key in alice:
        fs.create(key, of_user({"k": '"v"'}, "alice"))
    fs.create(key_of("bob"), of_user({}, "bob"))
    fs.create(key_of("anonymous"), record({}))

    records = dict(fs.user_records("alice", NOW))
    assert set(records) == set(alice)
    assert all(r == of_user({"k": '"v"'}, "alice") for r in records.values())
    assert listed(fs, "bob") == {key_of("bob")}
    assert listed(fs, "carol") == set()
    loaded = fs.load(alice[0])
    assert loaded is not None and loaded.user == "alice"
    assert path_of(root, alice[0]).read_bytes().startswith(FileSystemBackend.user_magic)
    assert path_of(root, key_of("anonymous")).read_bytes().startswith(FileSystemBackend.magic)
    assert {k: r.user for k, r in fs.items(NOW)}[key_of("bob")] == "bob"

    # One empty 0600 file per session under the sha256 of the user, in 0700 directories.
    assert markers(root, "alice") == set(alice)
    for path in user_dir(root, "alice").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_size == 0
    for directory in (root / "users", user_dir(root, "alice").parent, user_dir(root, "alice")):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_sessions_without_a_user_create_no_index(fs: FileSystemBackend, root: Path) -> None:
    fs.create(key_of("a"), record({"k": "1"}))
    assert fs.update(key_of("a"), Delta(NOW + HOUR, {"j": "2"}, user_changed=True), NOW)
    assert not (root / "users").exists()


@pytest.mark.parametrize("user", ["../../etc/passwd", "a/b", "", ".lock", "ünï ☃", "x" * 5000])
def test_users_never_become_paths(fs: FileSystemBackend, root: Path, user: str) -> None:
    fs.create(key_of("a"), of_user({}, user))
    assert listed(fs, user) == {key_of("a")}
    assert markers(root, user) == {key_of("a")}
    assert sorted(p.name for p in root.iterdir()) == sorted({"users", key_of("a")[:2]})
    fs.delete(key_of("a"))
    assert listed(fs, user) == set()


def test_change_of_user_moves_the_index(fs: FileSystemBackend, root: Path) -> None:
    key = key_of("a")
    fs.create(key, of_user({"k": "1"}, "alice"))
    assert fs.update(key, Delta(NOW + HOUR, {"j": "2"}, user="bob", user_changed=True), NOW)
    assert markers(root, "alice") == set()
    assert listed(fs, "alice") == set()
    assert dict(fs.user_records("bob", NOW))[key].data == {"k": "1", "j": "2"}

    # Saves that do not change hands keep the user.
    assert fs.update(key, Delta(NOW + 2 * HOUR, {"j": "3"}, frozenset({"k"})), NOW)
    assert fs.touch(key, NOW + 3 * HOUR, NOW)
    loaded = fs.load(key)
    assert loaded == of_user({"j": "3"}, "bob", expires_in=3 * HOUR)
    assert listed(fs, "bob") == {key}

    # Signing out keeps the session and leaves no index entry.
    assert fs.update(key, Delta(NOW + HOUR, user=None, user_changed=True), NOW)
    assert listed(fs, "bob") == set() and markers(root, "bob") == set()
    assert path_of(root, key).read_bytes().startswith(FileSystemBackend.magic)
    loaded = fs.load(key)
    assert loaded is not None and loaded.user is None and loaded.data == {"j": "3"}


def test_refused_saves_do_not_change_hands(fs: FileSystemBackend, root: Path) -> None:
    key = key_of("a")
    fs.create(key, of_user({"a": big(100)}, "alice"))
    delta = Delta(NOW + HOUR, {"b": big(100)}, max_size=150, user="bob", user_changed=True)
    with pytest.raises(SessionTooLargeError):
        fs.update(key, delta, NOW)
    assert listed(fs, "alice") == {key} and listed(fs, "bob") == set()
    expired = Delta(NOW + HOUR, user="bob", user_changed=True)
    assert fs.update(key, expired, NOW + 2 * HOUR) is False
    assert markers(root, "bob") == set()


def test_create_over_a_session_of_another_user(fs: FileSystemBackend, root: Path) -> None:
    key = key_of("a")
    fs.create(key, of_user({}, "alice"))
    fs.create(key, of_user({"k": "1"}, "bob"))
    assert markers(root, "alice") == set() and listed(fs, "bob") == {key}
    fs.create(key, record({}))
    assert markers(root, "bob") == set()


def test_delete_take_and_clear_remove_index_entries(fs: FileSystemBackend, root: Path) -> None:
    keys = [key_of(str(i)) for i in range(4)]
    for key in keys:
        fs.create(key, of_user({}, "alice"))
    fs.delete(keys[0])
    taken = fs.take(keys[1], NOW)
    assert taken is not None and taken.user == "alice"
    assert markers(root, "alice") == set(keys[2:])
    assert listed(fs, "alice") == set(keys[2:])
    assert fs.clear() == 2
    assert markers(root, "alice") == set()
    assert not user_dir(root, "alice").exists()


def test_expired_sessions_are_not_listed_and_lose_their_entries(
    fs: FileSystemBackend, root: Path
) -> None:
    live, old, later = key_of("live"), key_of("old"), key_of("later")
    fs.create(live, of_user({}, "alice", expires_in=DAY))
    fs.create(old, of_user({}, "alice", expires_in=-HOUR))
    fs.create(later, of_user({}, "alice", expires_in=2 * HOUR))
    assert markers(root, "alice") == {live, old, later}
    # Purge removes the expired files and their entries without a listing.
    assert fs.purge_expired(NOW) == 1
    assert markers(root, "alice") == {live, later}
    # A listing after a session expired drops its entry; purge removes the file.
    assert listed(fs, "alice", NOW + 3 * HOUR) == {live}
    assert markers(root, "alice") == {live}
    assert path_of(root, later).exists()
    assert fs.purge_expired(NOW + 3 * HOUR) == 1
    assert listed(fs, "alice") == {live}


def test_stale_entry_of_another_users_session_is_removed(fs: FileSystemBackend, root: Path) -> None:
    key = key_of("bob")
    fs.create(key, of_user({"secret": "1"}, "bob"))
    fs.create(key_of("a"), of_user({}, "alice"))
    (user_dir(root, "alice") / key).touch()
    assert listed(fs, "alice") == {key_of("a")}
    assert markers(root, "alice") == {key_of("a")}
    assert listed(fs, "bob") == {key}


def test_damaged_session_is_not_listed_and_keeps_its_entry_until_purged(
    fs: FileSystemBackend, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = key_of("a")
    fs.create(key, of_user({}, "alice"))
    path = path_of(root, key)
    path.write_bytes(path.read_bytes()[:-2] + b"!]")
    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        assert listed(fs, "alice") == set()
    assert any(key in r.getMessage() for r in caplog.records)
    assert markers(root, "alice") == {key}
    assert fs.purge_expired(NOW) == 0
    assert markers(root, "alice") == {key}
    # The header's expiry still holds: purge removes the file then, and its entry.
    assert fs.purge_expired(NOW + 2 * HOUR) == 1
    assert markers(root, "alice") == set()


@pytest.mark.parametrize(
    "body",
    [b"[]", b'["alice"]', b"[1, {}]", b"[null, {}]", b'["alice", {"k": 1}]', b'{"k": "v"}'],
)
def test_format_2_body_that_is_not_a_user_and_values_is_corrupt(
    fs: FileSystemBackend, root: Path, body: bytes
) -> None:
    key = key_of("a")
    fs.create(key, of_user({}, "alice"))
    path = path_of(root, key)
    times = path.read_bytes()[4:20]
    crc = struct.pack(">I", zlib.crc32(times + body))
    path.write_bytes(FileSystemBackend.user_magic + times + crc + body)
    with pytest.raises(CorruptRecordError):
        fs.load(key)
    assert listed(fs, "alice") == set()


def format_1_file(created: datetime, expires: datetime, data: dict[str, str]) -> bytes:
    """Return a session file as version 0.1 wrote it."""
    micros = [
        (d - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)
        for d in (created, expires)
    ]
    times = struct.pack(">qq", *micros)
    body = json.dumps(data, separators=(",", ":")).encode()
    return b"FSS\x01" + times + struct.pack(">I", zlib.crc32(times + body)) + body


def test_files_of_earlier_versions_stay_readable(fs: FileSystemBackend, root: Path) -> None:
    key = key_of("a")
    path = path_of(root, key)
    path.parent.mkdir(mode=0o700)
    path.write_bytes(format_1_file(NOW, NOW + HOUR, {"_user_id": '"7"'}))
    path.chmod(0o600)
    assert fs.load(key) == record({"_user_id": '"7"'})
    assert fs.update(key, Delta(NOW + HOUR, {"k": "1"}), NOW)
    assert path.read_bytes().startswith(b"FSS\x01")
    # The first save that gives it a user moves it to format 2 and indexes it.
    assert fs.update(key, Delta(NOW + HOUR, user="7", user_changed=True), NOW)
    assert listed(fs, "7") == {key}
    assert path.read_bytes().startswith(b"FSS\x02")
    # Sessions without a user are written as before, for older versions to read.
    fs.create(key_of("b"), record({"k": "1"}))
    assert path_of(root, key_of("b")).read_bytes() == format_1_file(NOW, NOW + HOUR, {"k": "1"})


MARKER_THEN_FAIL_CHILD = """
import resource, signal, sys
from datetime import datetime, timedelta, timezone
from flask_serversession.backends.base import Delta, Record
from flask_serversession.backends.filesystem import FileSystemBackend
from flask_serversession.errors import BackendError

backend = FileSystemBackend(sys.argv[1])
now = datetime.now(timezone.utc)
hour = timedelta(hours=1)
old, new = "ab" * 32, "cd" * 32
backend.create(old, Record({"k": '"small"'}, now, now + hour, user="bob"))
# The index entry is an empty file, which fits; the session file does not.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
big = '"' + "x" * 100_000 + '"'
for save in (
    lambda: backend.create(new, Record({"k": big}, now, now + hour, user="alice")),
    lambda: backend.update(
        old,
        Delta(now + hour, {"k": big}, user="alice", user_changed=True),
        now,
    ),
):
    try:
        save()
    except BackendError as e:
        print("BackendError", e.__cause__.errno)
"""


def test_failure_between_index_entry_and_file_leaves_a_stale_entry(
    fs: FileSystemBackend, root: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MARKER_THEN_FAIL_CHILD), str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["BackendError 27"] * 2
    old, new = "ab" * 32, "cd" * 32
    assert markers(root, "alice") == {old, new}
    assert fs.load(new) is None
    assert listed(fs, "alice") == set()
    assert markers(root, "alice") == set()
    assert listed(fs, "bob") == {old}


def check_index(fs: FileSystemBackend, root: Path, users: t.Sequence[str]) -> None:
    """Every session file that names a user has its entry; a listing leaves no other."""
    owners: dict[str, set[str]] = {u: set() for u in users}
    for path in root.glob("[0-9a-f][0-9a-f]/*"):
        if len(path.name) == 64:
            loaded = fs.load(path.name)
            if loaded is not None and loaded.user is not None:
                owners[loaded.user].add(path.name)
    for user in users:
        assert owners[user] <= markers(root, user)
    for user in users:
        assert listed(fs, user) == owners[user]
        assert markers(root, user) == owners[user]


KILLED_INDEX_CHILD = """
import sys
from datetime import datetime, timedelta, timezone
from flask_serversession.backends.base import Delta, Record
from flask_serversession.backends.filesystem import FileSystemBackend

backend = FileSystemBackend(sys.argv[1])
now = datetime.now(timezone.utc)
hour = timedelta(hours=1)
keys = [format(i, "02x") * 32 for i in range(6)]
users = ["alice", "bob", None]
i = 0
while True:
    key = keys[i % len(keys)]
    backend.create(key, Record({"n": str(i)}, now, now + hour, user=users[i % 3]))
    delta = Delta(now + hour, {"m": "1"}, user=users[(i + 1) % 3], user_changed=True)
    backend.update(key, delta, now)
    if i % 5 == 0:
        backend.delete(keys[(i + 3) % len(keys)])
    if i == 0:
        print("ready", flush=True)
    i += 1
"""


def test_killed_writer_leaves_the_index_a_superset(fs: FileSystemBackend, root: Path) -> None:
    for attempt in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_INDEX_CHILD, str(root)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        time.sleep(0.03 + 0.03 * attempt)
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        check_index(fs, root, ["alice", "bob"])


USERS = ["alice", "bob", None]


def _index_writer(fs: FileSystemBackend, root: Path, keys: list[str], rounds: int) -> None:
    """Move ``keys`` between users; after each save, the entry must be there."""
    for i in range(rounds):
        key = keys[i % len(keys)]
        user = USERS[i % 3]
        step = i // len(keys) % 4
        if step == 0:
            fs.create(key, of_user({"n": str(i)}, user))
        elif step == 1:
            assert fs.update(
                key, Delta(NOW + HOUR, {"n": str(i)}, user=user, user_changed=True), NOW
            )
        elif step == 2:
            assert fs.update(key, Delta(NOW + HOUR, {"m": str(i)}), NOW)
            loaded = fs.load(key)
            assert loaded is not None
            user = loaded.user
        else:
            taken = fs.take(key, NOW) if i % 2 else fs.delete(key)
            assert taken is None or isinstance(taken, Record)
            assert fs.load(key) is None
            continue
        if user is not None:
            assert key in markers(root, user), (key, user, i)


def _index_process(directory: str, n: int, rounds: int) -> None:
    fs = FileSystemBackend(directory)
    _index_writer(fs, Path(directory), [key_of(f"p{n}-{j}") for j in range(3)], rounds)


def _index_readers(
    fs: FileSystemBackend, stable: set[str], done: threading.Event, errors: list[BaseException]
) -> None:
    """List both users and purge until ``done``; the stable sessions are always listed."""
    deadline = time.monotonic() + 60
    try:
        while not done.is_set() and time.monotonic() < deadline:
            assert stable <= listed(fs, "alice")
            listed(fs, "bob")
            fs.purge_expired(NOW)
    except BaseException as e:
        errors.append(e)


def test_concurrent_threads_keep_the_index_a_superset(fs: FileSystemBackend, root: Path) -> None:
    stable = {key_of(f"stable{i}") for i in range(5)}
    for key in stable:
        fs.create(key, of_user({}, "alice"))
    done, errors = threading.Event(), []
    readers = [
        threading.Thread(target=_index_readers, args=(fs, stable, done, errors)) for _ in range(2)
    ]

    def write(n: int) -> None:
        try:
            _index_writer(fs, root, [key_of(f"t{n}-{j}") for j in range(3)], 120)
        except BaseException as e:
            errors.append(e)

    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for w in readers + writers:
        w.start()
    for w in writers:
        w.join(60)
    done.set()
    for w in readers:
        w.join(60)
    assert not any(w.is_alive() for w in readers + writers)
    assert errors == []
    check_index(fs, root, ["alice", "bob"])
    assert stable <= listed(fs, "alice")


def test_concurrent_processes_keep_the_index_a_superset(fs: FileSystemBackend, root: Path) -> None:
    stable = {key_of(f"stable{i}") for i in range(5)}
    for key in stable:
        fs.create(key, of_user({}, "alice"))
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_index_process, args=(str(root), n, 150)) for n in range(3)]
    for w in workers:
        w.start()
    done, errors = threading.Event(), []
    reader = threading.Thread(target=_index_readers, args=(fs, stable, done, errors))
    reader.start()
    for w in workers:
        w.join(60)
    done.set()
    reader.join(60)
    assert [w.exitcode for w in workers] == [0] * len(workers)
    assert errors == []
    check_index(fs, root, ["alice", "bob"])


def test_symlinks_in_the_user_index_are_never_followed(
    fs: FileSystemBackend, root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    victim = key_of("victim")
    fs.create(victim, of_user({}, "bob"))
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o700)
    (outside / victim).touch()
    (outside / "keep").write_text("keep")
    target = tmp_path / "target"
    target.write_text("target")
    before = {p.name: p.read_bytes() for p in outside.iterdir()}

    # A link where alice's directory belongs: never listed, replaced on her next save.
    fs.create(key_of("setup"), of_user({}, "alice"))
    fs.delete(key_of("setup"))
    directory = user_dir(root, "alice")
    assert directory.is_dir()
    directory.rmdir()
    directory.symlink_to(outside)
    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        assert listed(fs, "alice") == set()
        assert fs.purge_expired(NOW) == 0
    assert any("not a directory" in r.getMessage() for r in caplog.records)
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before
    fs.create(key_of("a"), of_user({}, "alice"))
    assert not directory.is_symlink() and markers(root, "alice") == {key_of("a")}
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before

    # A link as an entry only names a session; it is removed, not followed.
    (directory / key_of("b")).symlink_to(target)
    assert listed(fs, "alice") == {key_of("a")}
    assert markers(root, "alice") == {key_of("a")}
    (directory / key_of("c")).symlink_to(target)
    assert fs.purge_expired(NOW) == 0
    assert markers(root, "alice") == {key_of("a")}
    assert target.read_text() == "target"

    # A link as the whole index.
    assert fs.clear() == 2
    shutil.rmtree(root / "users")
    (root / "users").symlink_to(outside)
    assert listed(fs, "bob") == set()
    fs.create(key_of("d"), of_user({}, "bob"))
    assert (root / "users").is_dir() and not (root / "users").is_symlink()
    assert listed(fs, "bob") == {key_of("d")}
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before


@pytest.mark.parametrize("problem", ["foreign", "writable"])
def test_untrusted_user_index_directory_is_not_used(
    fs: FileSystemBackend, root: Path, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    key = key_of("a")
    fs.create(key, of_user({}, "alice"))
    directory = user_dir(root, "alice")
    if problem == "foreign":
        os.chown(directory, nobody(), -1)
    else:
        directory.chmod(0o777)
    with caplog.at_level(logging.ERROR, logger="flask_serversession"):
        assert listed(fs, "alice") == set()
    assert any("user index directory" in r.getMessage() for r in caplog.records)
    with pytest.raises(BackendError, match="chmod 0700"):
        fs.create(key_of("b"), of_user({}, "alice"))
    assert fs.load(key_of("b")) is None
    # Leaving alice's untrusted directory is allowed: her entry is just left behind.
    assert fs.update(key, Delta(NOW + HOUR, user="bob", user_changed=True), NOW)
    assert listed(fs, "bob") == {key}
    fs.create(key_of("c"), of_user({}, "carol"))
    assert listed(fs, "carol") == {key_of("c")}


@pytest.fixture
def memory_root(tmp_path: Path) -> t.Iterator[Path]:
    """A directory in RAM where there is one: creating many sessions costs no disk syncs."""
    shm = Path("/dev/shm")
    directory = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path / "ram"
    try:
        yield directory / "sessions"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_listing_a_thousand_sessions_of_one_user(
    memory_root: Path, record_property: t.Callable[[str, object], None]
) -> None:
    fs = FileSystemBackend(memory_root)
    mine = {key_of(f"mine{i}") for i in range(1000)}
    for key in mine:
        fs.create(key, of_user({"_user_id": '"42"', "csrf": big(40)}, "42"))
    for i in range(200):
        fs.create(key_of(f"other{i}"), of_user({}, f"user{i}"))
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        assert listed(fs, "42") == mine
        timings.append(time.perf_counter() - start)
    best = min(timings)
    record_property("figures", f"filesystem user_records of 1000 sessions: {best * 1000:.0f} ms")
    assert best < 1.0
