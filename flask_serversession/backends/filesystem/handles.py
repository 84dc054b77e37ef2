"""Descriptors of the session directory and its shards, opened once and checked on each use.

Opening, checking and closing the session directory and a shard on every
operation costs six or more system calls; keeping them open costs one
``stat`` each per operation, which also sees the directory or a shard being
removed, replaced or opened up to others: a descriptor is used only while its
path still names the very directory it was opened on (same device and inode,
which cannot be reused while the descriptor is open), and the trust checks
run on each ``stat`` as they ran on each open. That is one descriptor per
shard used and one for the directory: at most 257 per process and backend.

The ``.lock`` file of a shard is opened anew by each locked operation, as
before: a ``flock`` belongs to an open file, so one per operation serializes
threads and processes alike, those of older versions too. A child process
made by ``fork`` closes what it inherited and opens its own, since a thread
of its parent may have held the mutex or a ``.lock`` file: a child that kept
its copy of a held ``.lock`` file would keep the lock from ever being
released. Descriptors that stopped matching
their path are closed once no operation uses them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
import weakref
from contextlib import suppress

from ...errors import BackendError
from ..base import CorruptRecordError
from . import files as _files


class _Dir:
    """An open directory: its descriptor and identity."""

    __slots__ = ("dev", "fd", "ino")

    def __init__(self, fd: int, st: os.stat_result) -> None:
        self.fd, self.dev, self.ino = fd, st.st_dev, st.st_ino

    def close(self) -> None:
        if self.fd >= 0:
            with suppress(OSError):
                os.close(self.fd)
        self.fd = -1


class Handles:
    """The open session directory ``path`` and its shards, shared by the threads of a process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._mutex = threading.Lock()
        #: The session directory, when open: one item or none.
        self._root: list[_Dir] = []
        self._shards: dict[str, _Dir] = {}
        self._busy = 0
        self._retired: list[_Dir] = []
        #: The ``.lock`` files of the operations under way.
        self.held: set[int] = set()
        self.euid = os.geteuid()
        _LIVE.add(self)
        # Closes the descriptors when the backend goes; it must not hold self.
        weakref.finalize(self, _close_all, self._root, self._shards, self._retired)

    def use(self, action: str) -> Use:
        """An operation: ``with`` gives the trusted session directory's descriptor."""
        return Use(self, action)

    def shard(self, root: int, name: str, *, lock: bool, create: bool = False) -> Held:
        """Shard ``name``, locked if asked: ``with`` gives its descriptor, None if missing."""
        return Held(self, root, name, lock, create)

    def close(self) -> None:
        """Close every descriptor once no operation uses it."""
        with self._mutex:
            self._retire_all()
            if not self._busy:
                self._close_retired()

    def forget(self) -> None:
        """In a child made by ``fork``: close what was inherited, start afresh."""
        self._mutex = threading.Lock()
        self._busy = 0
        self._retire_all()
        self._close_retired()
        for fd in self.held:
            with suppress(OSError):
                os.close(fd)
        self.held.clear()

    # Called with the mutex held.

    def _retire_all(self) -> None:
        self._retired.extend(self._root)
        self._root.clear()
        self._retired.extend(self._shards.values())
        self._shards.clear()

    def _close_retired(self) -> None:
        for handle in self._retired:
            handle.close()
        self._retired.clear()

    # The checks.

    def root(self) -> int:
        """The session directory's descriptor, after checking that its path still names it."""
        st = os.stat(self.path)
        #: The user the app runs as, asked once per operation.
        self.euid = euid = os.geteuid()
        problem = _files.distrust(self.path, st, "session directory", euid)
        if problem is not None:
            raise PermissionError(errno.EPERM, problem)
        for handle in self._root:
            if handle.ino == st.st_ino and handle.dev == st.st_dev:
                return handle.fd
        fd = _files.open_root(self.path)
        fresh = _Dir(fd, os.fstat(fd))
        with self._mutex:
            # A new directory has new shards.
            self._retire_all()
            self._root.append(fresh)
        return fd

    def shard_dir(self, root: int, name: str, *, create: bool) -> _Dir | None:
        """Shard ``name`` of ``root``; None if it is missing and not to be created.

        :raise CorruptRecordError: the shard is not a trusted directory.
        :raise PermissionError: the same, when creating.
        """
        path = os.path.join(self.path, name)
        try:
            st = os.stat(name, dir_fd=root, follow_symlinks=False)
        except FileNotFoundError:
            if not create:
                return None
            return self._open(name, _files.make_shard(root, name, path))
        if not stat.S_ISDIR(st.st_mode):
            if not create:
                raise CorruptRecordError(f"{path!r} is not a directory")
            return self._open(name, _files.make_shard(root, name, path))
        problem = _files.distrust(path, st, "session shard", self.euid)
        if problem is not None:
            if create:
                raise PermissionError(errno.EPERM, problem)
            raise CorruptRecordError(problem)
        handle = self._shards.get(name)
        if handle is not None and handle.ino == st.st_ino and handle.dev == st.st_dev:
            return handle
        fd = _files.make_shard(root, name, path) if create else _files.open_shard(root, name, path)
        return None if fd is None else self._open(name, fd)

    def _open(self, name: str, fd: int) -> _Dir:
        fresh = _Dir(fd, os.fstat(fd))
        with self._mutex:
            old = self._shards.get(name)
            if old is not None:
                self._retired.append(old)
            self._shards[name] = fresh
        return fresh

    def enter(self) -> None:
        with self._mutex:
            self._busy += 1

    def leave(self) -> None:
        with self._mutex:
            self._busy -= 1
            if not self._busy and self._retired:
                self._close_retired()


class Use:
    """One operation on the session directory (see :meth:`Handles.use`); an OSError
    inside becomes a BackendError."""

    __slots__ = ("action", "handles")

    def __init__(self, handles: Handles, action: str) -> None:
        self.handles, self.action = handles, action

    def __enter__(self) -> int:
        handles = self.handles
        handles.enter()
        try:
            return handles.root()
        except BaseException as e:
            handles.leave()
            if isinstance(e, OSError):
                raise self._failed(e) from e
            raise

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        self.handles.leave()
        if isinstance(error, OSError):
            raise self._failed(error) from error

    def _failed(self, error: OSError) -> BackendError:
        return BackendError(f"Cannot {self.action} in {self.handles.path!r}: {error}")


class Held:
    """Shard ``name``, locked if asked (see :meth:`Handles.shard`)."""

    __slots__ = ("create", "handles", "lock", "lock_fd", "name", "root")

    def __init__(self, handles: Handles, root: int, name: str, lock: bool, create: bool) -> None:
        self.handles, self.root, self.name = handles, root, name
        self.lock, self.create = lock, create
        self.lock_fd = -1

    def __enter__(self) -> int | None:
        handles, name = self.handles, self.name
        handle = handles.shard_dir(self.root, name, create=self.create)
        if handle is None:
            return None
        if self.lock:
            fd = os.open(".lock", _files.LOCK_FLAGS, 0o600, dir_fd=handle.fd)
            # Known before the wait, so that a child forked meanwhile closes it.
            handles.held.add(fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                handles.held.discard(fd)
                os.close(fd)
                raise
            self.lock_fd = fd
        return handle.fd

    def __exit__(self, *exc_info: object) -> None:
        fd = self.lock_fd
        if fd >= 0:
            self.handles.held.discard(fd)
            # Closing the only descriptor of this open .lock file releases it.
            os.close(fd)
            self.lock_fd = -1


def _close_all(root: list[_Dir], shards: dict[str, _Dir], retired: list[_Dir]) -> None:
    for handle in [*root, *shards.values(), *retired]:
        handle.close()


_LIVE: weakref.WeakSet[Handles] = weakref.WeakSet()


def _after_fork() -> None:
    for handles in list(_LIVE):
        handles.forget()


os.register_at_fork(after_in_child=_after_fork)
