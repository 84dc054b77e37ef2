from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from contextlib import suppress

from ...errors import BackendError
from ...log import logger
from ..base import CorruptRecordError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a planted FIFO must not wait for a writer.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: How deep a planted directory tree may be before removing it gives up.
MAX_DEPTH = 32

# What open() reports for a socket or a device without a driver.
_NOT_A_FILE = {errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP}
_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def distrust(path: str, st: os.stat_result, what: str, euid: int | None = None) -> str | None:
    """Say why a directory must not hold sessions, or None when it may.

    It must belong to the user the app runs as (``euid``, by default asked
    for) and be writable by no one else: anyone else who can write there can
    plant or swap sessions.
    """
    if euid is None:
        euid = os.geteuid()
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == euid and not mode & 0o022:
        return None
    return (
        f"The {what} {path!r} is owned by uid {st.st_uid} with mode {mode:04o}; it must"
        f" be owned by uid {euid} (the user the app runs as) and writable by no one"
        " else, or other users could read, plant or replace sessions. Fix it with"
        f" 'chown {euid} {path} && chmod 0700 {path}', or use a new directory."
    )


def open_root(path: str) -> int:
    """Open the session directory and check that it can be trusted.

    :raise PermissionError: it belongs to another user or others may write it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        problem = distrust(path, os.fstat(fd), "session directory")
        if problem is not None:
            raise PermissionError(errno.EPERM, problem)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_shard(parent_fd: int, name: str, path: str, what: str = "session shard") -> int | None:
    """Open directory ``name`` (a shard) of ``parent_fd``; None if it does not exist.

    :param what: what the directory is, for messages.
    :raise CorruptRecordError: it is not a directory (never followed through a
        symbolic link) or it is not trusted.
    """
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP):
            raise CorruptRecordError(f"{path!r} is not a directory") from e
        raise
    problem = distrust(path, os.fstat(fd), what)
    if problem is not None:
        os.close(fd)
        raise CorruptRecordError(problem)
    return fd


def make_shard(parent_fd: int, name: str, path: str, what: str = "session shard") -> int:
    """Open directory ``name``, creating it (0700) or replacing a non-directory planted there.

    :param what: what the directory is, for messages.
    :raise PermissionError: it is a directory that is not trusted.
    """
    for _attempt in range(3):
        with suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
        except FileNotFoundError:
            continue
        except OSError as e:
            if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
            # The session directory is ours alone, so whatever sits at a
            # directory's name (a symbolic link, a FIFO) was planted: drop it.
            logger.error("Replacing %r, which is not a directory, by a new %s", path, what)
            with suppress(FileNotFoundError):
                os.unlink(name, dir_fd=parent_fd)
            continue
        problem = distrust(path, os.fstat(fd), what)
        if problem is not None:
            os.close(fd)
            raise PermissionError(errno.EPERM, problem)
        return fd
    raise OSError(errno.EAGAIN, f"{path!r} keeps changing while it is being created")


# The directories and the lock are held by plain context-manager classes:
# every load and save enters two or three, and a generator-based context
# manager costs several times as much to enter and leave.


class Operation:
    """One operation on the session directory: ``with`` gives the trusted
    directory's descriptor, and an OSError inside becomes a BackendError.

    :param action: what is being done, e.g. ``"read a session"``.
    """

    __slots__ = ("action", "fd", "path")

    def __init__(self, path: str, action: str) -> None:
        self.path, self.action = path, action
        self.fd = -1

    def __enter__(self) -> int:
        try:
            self.fd = open_root(self.path)
        except OSError as e:
            raise self._failed(e) from e
        return self.fd

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        try:
            os.close(self.fd)
        except OSError as e:
            if error is None:
                raise self._failed(e) from e
        if isinstance(error, OSError):
            raise self._failed(error) from error

    def _failed(self, error: OSError) -> BackendError:
        return BackendError(f"Cannot {self.action} in {self.path!r}: {error}")


class Root:
    """The trusted session directory (see :func:`open_root`): ``with`` gives its descriptor."""

    __slots__ = ("fd", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> int:
        self.fd = open_root(self.path)
        return self.fd

    def __exit__(self, *exc_info: object) -> None:
        os.close(self.fd)


class Shard:
    """Trusted shard ``name`` of ``root_fd``, locked if asked: ``with`` gives its
    descriptor, or None if the shard is missing.

    :param create: create the shard (see :func:`make_shard`) if it is missing.
    :raise CorruptRecordError: the shard is not a trusted directory.
    """

    __slots__ = ("create", "fd", "lock", "lock_fd", "name", "path", "root_fd")

    def __init__(
        self, root_fd: int, name: str, path: str, *, lock: bool, create: bool = False
    ) -> None:
        self.root_fd, self.name, self.path = root_fd, name, path
        self.lock, self.create = lock, create
        self.fd = self.lock_fd = -1

    def __enter__(self) -> int | None:
        name, path = self.name, self.path
        fd = (
            make_shard(self.root_fd, name, path)
            if self.create
            else open_shard(self.root_fd, name, path)
        )
        if fd is None:
            return None
        if self.lock:
            try:
                self.lock_fd = lock(fd)
            except BaseException:
                os.close(fd)
                raise
        self.fd = fd
        return fd

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.lock_fd >= 0:
                os.close(self.lock_fd)
        finally:
            if self.fd >= 0:
                os.close(self.fd)


class Locked:
    """Holds the ``flock`` of directory ``dir_fd``'s ``.lock`` file while in ``with``."""

    __slots__ = ("dir_fd", "fd")

    def __init__(self, dir_fd: int) -> None:
        self.dir_fd = dir_fd
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = lock(self.dir_fd)

    def __exit__(self, *exc_info: object) -> None:
        os.close(self.fd)


def lock(dir_fd: int) -> int:
    """Take the ``flock`` of the directory's ``.lock`` file; closing the returned
    descriptor, the only one of this open file, releases it."""
    fd = os.open(".lock", LOCK_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def exists(dir_fd: int, name: str) -> bool:
    """Whether directory ``dir_fd`` has an entry ``name``, whatever it is."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def describe(st: os.stat_result, euid: int | None = None) -> str | None:
    """Say why an entry is not a session file of user ``euid`` (by default this
    process's), or None."""
    kind = stat.S_IFMT(st.st_mode)
    if kind != stat.S_IFREG:
        return f"is not a regular file but {_KINDS.get(kind, 'something else')}"
    if st.st_uid != (os.geteuid() if euid is None else euid):
        return f"belongs to uid {st.st_uid}, not to this process"
    return None


def read(
    dir_fd: int, name: str, path: str, size: int = -1, euid: int | None = None
) -> bytes | None:
    """Return the content (its first ``size`` bytes) of file ``name``, or None if absent.

    :param euid: the user the file must belong to; by default this process's.
    :raise CorruptRecordError: the entry is not a regular file of that user.
    """
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CorruptRecordError(f"{path!r} is not a regular file but a symbolic link") from e
        if e.errno in _NOT_A_FILE:
            raise CorruptRecordError(f"{path!r} is not a regular file: {e.strerror}") from e
        raise
    try:
        st = os.fstat(fd)
        problem = describe(st, euid)
        if problem is not None:
            raise CorruptRecordError(f"{path!r} {problem}")
        if size < 0:
            # Files are replaced, never written into: one read of one byte
            # more than fstat saw gets them whole, and a short read is the end.
            content = os.read(fd, st.st_size + 1)
            if len(content) == st.st_size:
                return content
            parts, total = [content], len(content)
        else:
            parts, total = [], 0
        while size < 0 or total < size:
            chunk = os.read(fd, size - total if size >= 0 else st.st_size + 65536)
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


def names(dir_fd: int) -> list[str]:
    """The names in directory ``dir_fd``, sorted."""
    with os.scandir(dir_fd) as entries:
        return sorted(e.name for e in entries)


def drop_planted(root: int, pattern: re.Pattern[str], before: float, path: str) -> None:
    """Unlink the non-directories of ``root`` (at ``path``) whose names match
    ``pattern``, where only directories belong, last changed before ``before``."""
    with os.scandir(root) as entries:
        planted = [e for e in entries if pattern.fullmatch(e.name)]
    for entry in planted:
        if entry.is_dir(follow_symlinks=False):
            continue
        with suppress(FileNotFoundError, IsADirectoryError):
            if entry.stat(follow_symlinks=False).st_mtime < before:
                logger.error("Removing %r: not a directory", os.path.join(path, entry.name))
                os.unlink(entry.name, dir_fd=root)


def remove(dir_fd: int, name: str) -> bool:
    """Remove entry ``name`` whatever it is, never following a symbolic link.

    Returns False when there was nothing to remove.
    """
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    except OSError as e:
        # Linux refuses to unlink a directory with EISDIR, POSIX allows EPERM.
        if e.errno not in (errno.EISDIR, errno.EPERM):
            raise
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            raise
        _remove_tree(dir_fd, name, 0)
    return True


def _remove_tree(parent_fd: int, name: str, depth: int) -> None:
    # Every step is relative to a descriptor opened with O_NOFOLLOW, so a
    # symbolic link swapped in anywhere is removed, never followed.
    if depth > MAX_DEPTH:
        raise OSError(errno.ELOOP, f"directory tree deeper than {MAX_DEPTH} levels", name)
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        return
    try:
        with os.scandir(fd) as entries:
            children = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        for child, is_dir in children:
            if is_dir:
                _remove_tree(fd, child, depth + 1)
            else:
                with suppress(FileNotFoundError):
                    os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    with suppress(FileNotFoundError):
        os.rmdir(name, dir_fd=parent_fd)
