"""The filesystem backend's kept-open descriptors, its shard locks and its atomic swap.

Loads and saves keep the session directory, the shards and their ``.lock``
files open (see ``handles.py``) and swap a new session file in with
``renameat2(RENAME_EXCHANGE)`` (see ``replace.py``): these tests hold them
to the guarantees of opening everything afresh and renaming.
"""

from __future__ import annotations

import gc
import hashlib
import os
import subprocess
import sys
import textwrap
from datetime import datetime
from datetime import timedelta
from datetime import timezone
from pathlib import Path

import pytest

from flask_serversession.backends.base import Delta
from flask_serversession.backends.base import Record
from flask_serversession.backends.filesystem import FileSystemBackend
from flask_serversession.backends.filesystem import replace as replace_module
from flask_serversession.errors import BackendError

from .test_filesystem import temp_files

NOW = datetime.now(timezone.utc).replace(microsecond=0)
HOUR = timedelta(hours=1)
REPO = Path(__file__).resolve().parents[2]


def key_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def record(data: dict[str, str]) -> Record:
    return Record(data, NOW, NOW + HOUR)


def open_fds(under: Path) -> int:
    """How many descriptors of this process name something under ``under``."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            continue
        count += target.startswith(str(under))
    return count


def test_replaced_session_directory_is_used_at_once(
    fs: FileSystemBackend, root: Path, tmp_path: Path
) -> None:
    fs.create(key_of("a"), record({"k": "1"}))
    moved = tmp_path / "moved"
    root.rename(moved)
    root.mkdir(mode=0o700)
    # The kept descriptor names the moved directory: it must not be read.
    assert fs.load(key_of("a")) is None
    assert fs.update(key_of("a"), Delta(NOW + HOUR, {"k": "2"}), NOW) is False
    fs.create(key_of("b"), record({"k": "3"}))
    assert (root / key_of("b")[:2] / key_of("b")).is_file()
    assert not (moved / key_of("b")[:2] / key_of("b")).exists()
    loaded = FileSystemBackend(moved).load(key_of("a"))
    assert loaded is not None and loaded.data == {"k": "1"}


def test_replacing_the_directory_again_and_again_leaks_no_descriptors(
    fs: FileSystemBackend, root: Path, tmp_path: Path
) -> None:
    fs.create(key_of("a"), record({}))
    for i in range(20):
        root.rename(tmp_path / f"old{i}")
        root.mkdir(mode=0o700)
        fs.create(key_of("a"), record({"i": str(i)}))
        assert fs.load(key_of("a")) == record({"i": str(i)})
    # The directory and the one shard used: nothing of the replaced ones.
    assert open_fds(tmp_path) == 2


def test_removed_directory_fails_each_access_until_it_is_back(
    fs: FileSystemBackend, root: Path
) -> None:
    fs.create(key_of("a"), record({}))
    for path in sorted(root.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    root.rmdir()
    with pytest.raises(BackendError, match="No such file"):
        fs.load(key_of("a"))
    with pytest.raises(BackendError, match="No such file"):
        fs.create(key_of("a"), record({}))
    root.mkdir(mode=0o700)
    assert fs.load(key_of("a")) is None
    fs.create(key_of("a"), record({"k": "1"}))
    assert fs.load(key_of("a")) == record({"k": "1"})


def test_replaced_shard_is_used_at_once(fs: FileSystemBackend, root: Path, tmp_path: Path) -> None:
    key = key_of("a")
    fs.create(key, record({"k": "1"}))
    shard = root / key[:2]
    before = (shard / key).read_bytes()
    moved = tmp_path / "moved-shard"
    shard.rename(moved)
    shard.mkdir(mode=0o700)
    assert fs.load(key) is None
    assert fs.update(key, Delta(NOW + HOUR, {"k": "2"}), NOW) is False
    fs.create(key, record({"k": "3"}))
    assert fs.load(key) == record({"k": "3"})
    assert (moved / key).read_bytes() == before
    assert sorted(p.name for p in moved.iterdir()) == [".lock", key]
    assert (shard / ".lock").exists()


def test_an_operation_under_way_keeps_its_descriptors_when_they_are_replaced(
    fs: FileSystemBackend, root: Path, tmp_path: Path
) -> None:
    key = key_of("a")
    fs.create(key, record({"k": "1"}))
    handles = fs._handles
    with handles.use("test") as old_root, handles.shard(old_root, key[:2], lock=True) as fd:
        assert fd is not None
        root.rename(tmp_path / "moved")
        root.mkdir(mode=0o700)
        # Another operation sees the new directory and sets the old one aside...
        fs.create(key_of("b"), record({}))
        # ...but closes nothing this one still uses.
        assert os.path.samestat(os.fstat(fd), os.stat(tmp_path / "moved" / key[:2]))
        assert os.path.samestat(os.fstat(old_root), os.stat(tmp_path / "moved"))
    with pytest.raises(OSError):
        os.fstat(old_root)


def test_close_and_collection_release_every_descriptor(root: Path) -> None:
    fs = FileSystemBackend(root)
    for i in range(5):
        fs.create(key_of(str(i)), record({}))
        fs.update(key_of(str(i)), Delta(NOW + HOUR, {"k": "1"}), NOW)
    assert open_fds(root) == 1 + len({key_of(str(i))[:2] for i in range(5)})
    fs.close()
    assert open_fds(root) == 0
    # Used again after close, it opens what it needs.
    assert fs.load(key_of("1")) == record({"k": "1"})
    assert open_fds(root) == 2
    del fs
    gc.collect()
    assert open_fds(root) == 0


FORK_CHILD = """
import os, sys, time
from datetime import datetime, timedelta, timezone
from flask_serversession.backends.base import Delta, Record
from flask_serversession.backends.filesystem import FileSystemBackend

now = datetime.now(timezone.utc)
key = "ab" * 32
fs = FileSystemBackend(sys.argv[1])
fs.create(key, Record({"parent": "1"}, now, now + timedelta(hours=1)))
handles = fs._handles
with handles.use("test") as root, handles.shard(root, key[:2], lock=True):
    pid = os.fork()
    if pid == 0:
        # The child inherited the parent's held .lock file: it must close
        # its copy (or the parent's lock would outlive the parent's close)
        # and wait for the parent's flock on a .lock file of its own.
        ok = fs.update(key, Delta(now + timedelta(hours=1), {"child": "1"}), now)
        os._exit(0 if ok else 3)
    blocked = False
    for _ in range(2000):
        with open("/proc/locks") as f:
            if any("->" in line and f" {pid} " in line for line in f):
                blocked = True
                break
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            print("the child saved while the parent held the lock")
            sys.exit(1)
        time.sleep(0.005)
    if not blocked:
        print("the child never waited for the lock")
        os.kill(pid, 9)
        sys.exit(1)
for _ in range(4000):
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.005)
else:
    print("the child still waits for the lock its parent released")
    os.kill(pid, 9)
    sys.exit(1)
assert os.waitstatus_to_exitcode(status) == 0, status
assert fs.load(key).data == {"parent": "1", "child": "1"}, fs.load(key)
print("ok")
"""


def test_forked_child_waits_for_its_parents_lock(root: Path) -> None:
    # A fresh process: fork() in pytest's own, which has threads, is unsafe.
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORK_CHILD), str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "ok", done.stdout + done.stderr


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_leftover_temp_file_of_a_session_is_replaced(
    fs: FileSystemBackend, root: Path, kind: str
) -> None:
    key = key_of("a")
    fs.create(key, record({"k": "1"}))
    leftover = root / key[:2] / f"{FileSystemBackend.temp_prefix}{key}.part"
    if kind == "file":
        leftover.write_bytes(b"torn")
    else:
        (leftover / "inside").mkdir(parents=True)
    assert fs.update(key, Delta(NOW + HOUR, {"k": "2"}), NOW)
    assert fs.load(key) == record({"k": "2"})
    assert temp_files(root) == []


def test_exchange_swaps_two_entries(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"A")
    (tmp_path / "b").write_bytes(b"B")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if not replace_module.exchange(fd, "a", "b"):
            pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
        assert (tmp_path / "a").read_bytes() == b"B"
        assert (tmp_path / "b").read_bytes() == b"A"
        # A missing entry: nothing is changed, the caller renames instead.
        assert replace_module.exchange(fd, "a", "missing") is False
        assert (tmp_path / "a").read_bytes() == b"B"
    finally:
        os.close(fd)


def test_saves_rename_where_there_is_no_exchange(
    fs: FileSystemBackend, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replace_module, "_call", None)
    key = key_of("a")
    fs.create(key, record({"k": "1"}))
    inode = (root / key[:2] / key).stat().st_ino
    assert fs.update(key, Delta(NOW + HOUR, {"k": "2"}), NOW)
    assert (root / key[:2] / key).stat().st_ino != inode
    assert fs.load(key) == record({"k": "2"})
    assert temp_files(root) == []
