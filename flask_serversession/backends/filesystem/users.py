from __future__ import annotations

import errno
import hashlib
import os
import re
import time
import typing as t
from contextlib import suppress
from datetime import datetime

from ...log import logger
from ..base import CorruptRecordError
from ..base import Record
from . import files as _files
from . import format as _format

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX2 = re.compile(r"[0-9a-f]{2}")
_MARKER_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_WHAT = "user index directory"
#: Seconds an empty user directory stays before a purge's sweep removes it.
EMPTY_DIRECTORY_GRACE = 60.0


def user_hash(user: str) -> str:
    """Return the name of a user's index directory: a user never becomes a path."""
    return hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()


class UserIndex:
    """Empty marker files ``users/<h[:2]>/<h>/<key>`` naming each user's sessions.

    ``h`` is the sha256 of the user. Only the names matter: a marker says
    that the session under ``key`` may belong to the user, and a reader
    checks the session file itself. The caller holds the lock of the
    session's shard for every change of that session's markers, so a marker
    is written before the session file names its user and removed only
    after no session file names that user any more.

    :param directory: the session directory.
    :param fsync: flush each new marker and directory to the disk, so that a
        power loss cannot drop a marker whose session file survived.
    """

    #: Name of the index's top directory in the session directory.
    top = "users"

    def __init__(self, directory: str, *, fsync: bool) -> None:
        self.directory = directory
        self.fsync = fsync

    def _where(self, *names: str) -> str:
        return os.path.join(self.directory, self.top, *names)

    def _session(self, *names: str) -> str:
        """Path of a session shard or file, for messages."""
        return os.path.join(self.directory, *names)

    def _descend(self, root: int, names: tuple[str, ...], *, create: bool) -> int | None:
        """Open ``users/<names...>`` of ``root`` one level at a time, never through a link.

        Returns None when a level does not exist and ``create`` is false.
        With :attr:`fsync`, a level created here is made durable by an
        ``fsync`` of its parent.

        :raise CorruptRecordError: a level is not a trusted directory.
        :raise PermissionError: creating, a level is an untrusted directory.
        """
        fd: int | None = root
        path = self.directory
        try:
            for name in (self.top, *names):
                assert fd is not None
                path = os.path.join(path, name)
                try:
                    child = _files.open_shard(fd, name, path, _WHAT)
                except CorruptRecordError:
                    if not create:
                        raise
                    child = None
                if child is None and create:
                    child = _files.make_shard(fd, name, path, _WHAT)
                    if self.fsync:
                        os.fsync(fd)
                if fd != root:
                    os.close(fd)
                fd = child
                if fd is None:
                    return None
            return fd
        except BaseException:
            if fd is not None and fd != root:
                os.close(fd)
            raise

    def add(self, root: int, user: str, key: str) -> None:
        """Write the marker of ``key`` for ``user`` unless it is there.

        ``root`` is the trusted session directory, as are all such parameters
        here. With :attr:`fsync`, the marker is on the disk when this returns.
        """
        h = user_hash(user)
        for _attempt in range(5):
            fd = self._descend(root, (h[:2], h), create=True)
            assert fd is not None
            try:
                os.close(os.open(key, _MARKER_FLAGS, 0o600, dir_fd=fd))
            except FileExistsError:
                return
            except FileNotFoundError:
                # A sweep removed the empty directory after we opened it.
                continue
            else:
                if self.fsync:
                    os.fsync(fd)
                return
            finally:
                os.close(fd)
        raise OSError(errno.EAGAIN, f"{self._where(h[:2], h)!r} keeps disappearing")

    def remove(self, root: int, user: str, key: str) -> None:
        """Remove the marker of ``key`` for ``user``, if there is one."""
        h = user_hash(user)
        fd = self._descend(root, (h[:2], h), create=False)
        if fd is not None:
            try:
                _files.remove(fd, key)
            finally:
                os.close(fd)

    def keys(self, root: int, user: str) -> list[str]:
        """Return the keys that ``user``'s markers name.

        :raise CorruptRecordError: the user's directory is not trusted.
        """
        h = user_hash(user)
        fd = self._descend(root, (h[:2], h), create=False)
        if fd is None:
            return []
        try:
            return self._marker_names(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _marker_names(fd: int) -> list[str]:
        with os.scandir(fd) as entries:
            return sorted(e.name for e in entries if _HEX64.fullmatch(e.name))

    def records(self, root: int, user: str, now: datetime) -> list[tuple[str, Record]]:
        """Return ``(key, record)`` of every live session of ``user``.

        Reads the session file that each of the user's markers names, without
        locks. A marker found stale is checked again under its session
        shard's lock, so that a save under way cannot lose its marker, and
        removed.
        """
        try:
            keys = self.keys(root, user)
        except CorruptRecordError as e:
            logger.error("Cannot list the sessions of a user: %s", e)
            return []
        by_shard: dict[str, list[str]] = {}
        for key in keys:
            by_shard.setdefault(key[:2], []).append(key)
        found: list[tuple[str, Record]] = []
        stale: list[str] = []
        for name, names in by_shard.items():
            try:
                with _files.Shard(root, name, self._session(name), lock=False) as fd:
                    for key in names:
                        record, gone = self._check(fd, key, user, now)
                        if record is not None:
                            found.append((key, record))
                        elif gone:
                            stale.append(key)
            except CorruptRecordError as e:
                logger.error("Skipping a session shard: %s", e)
        for key in stale:
            try:
                with _files.Shard(root, key[:2], self._session(key[:2]), lock=True) as fd:
                    record, gone = self._check(fd, key, user, now)
                    if record is not None:
                        found.append((key, record))
                    elif gone:
                        self.remove(root, user, key)
            except CorruptRecordError as e:
                logger.error("Skipping a session shard: %s", e)
        return found

    def _check(
        self, fd: int | None, key: str, user: str, now: datetime
    ) -> tuple[Record | None, bool]:
        """Return ``(record, stale)`` for ``user``'s marker of ``key``.

        ``record`` is the session when it is live and ``user``'s; ``stale``
        says that the marker names no such session: the file is absent,
        expired or names another user or none. A damaged file is neither:
        its marker stays until purge has removed the file.
        """
        if fd is None:
            return None, True
        path = self._session(key[:2], key)
        try:
            content = _files.read(fd, key, path)
            if content is None:
                return None, True
            record = _format.record(path, content)
        except CorruptRecordError as e:
            logger.error("Skipping corrupt session %s: %s", key, e)
            return None, False
        if record.user != user or record.expires_at <= now:
            return None, True
        return record, False

    def sweep(self, root: int, *, grace: float) -> None:
        """Remove markers whose session file is gone, and user directories left
        empty and untouched for ``grace`` seconds."""
        shards: dict[str, int | None] = {}
        try:
            for user_fd, keys in self.walk(root, grace=grace):
                for key in keys:
                    name, path = key[:2], self._session(key[:2])
                    if name not in shards:
                        try:
                            shards[name] = _files.open_shard(root, name, path)
                        except CorruptRecordError:
                            shards[name] = None
                    fd = shards[name]
                    if fd is not None and _files.exists(fd, key):
                        continue
                    try:
                        # Checked again under the lock: a save may be under way.
                        with _files.Shard(root, name, path, lock=True) as fd:
                            if fd is None or not _files.exists(fd, key):
                                _files.remove(user_fd, key)
                    except CorruptRecordError as e:
                        logger.error("Keeping the user index marker of %s: %s", key, e)
        finally:
            for fd in shards.values():
                if fd is not None:
                    os.close(fd)

    def walk(
        self, root: int, *, grace: float = EMPTY_DIRECTORY_GRACE
    ) -> t.Iterator[tuple[int, list[str]]]:
        """Yield ``(descriptor, keys)`` of every user's directory.

        After the consumer is done with a directory, it is removed if empty,
        which :meth:`add` copes with. Untrusted directories are logged and
        skipped; non-directories planted in the tree are removed unfollowed.
        """
        try:
            top = self._descend(root, (), create=False)
        except CorruptRecordError as e:
            self._drop_planted(root, self.top, e)
            return
        if top is None:
            return
        try:
            for h2 in self._subdirs(top, _HEX2):
                group = self._open_level(top, h2, self._where(h2))
                if group is None:
                    continue
                try:
                    yield from self._walk_group(group, h2, grace)
                finally:
                    os.close(group)
        finally:
            os.close(top)

    def _walk_group(self, group: int, h2: str, grace: float) -> t.Iterator[tuple[int, list[str]]]:
        for h in self._subdirs(group, _HEX64):
            fd = self._open_level(group, h, self._where(h2, h))
            if fd is None:
                continue
            try:
                yield fd, self._marker_names(fd)
                with os.scandir(fd) as entries:
                    empty = next(entries, None) is None
                # Only a directory left untouched for a while goes, so a save
                # that has just made it or emptied it is not raced; rmdir
                # fails harmlessly if a marker was added meanwhile.
                if empty and time.time() - os.fstat(fd).st_mtime >= grace:
                    with suppress(OSError):
                        os.rmdir(h, dir_fd=group)
            finally:
                os.close(fd)

    @staticmethod
    def _subdirs(fd: int, pattern: re.Pattern[str]) -> list[str]:
        with os.scandir(fd) as entries:
            return sorted(e.name for e in entries if pattern.fullmatch(e.name))

    @classmethod
    def _open_level(cls, parent: int, name: str, path: str) -> int | None:
        """Open a directory of the index; None if it is missing or not trusted."""
        try:
            return _files.open_shard(parent, name, path, _WHAT)
        except CorruptRecordError as e:
            cls._drop_planted(parent, name, e)
            return None

    @staticmethod
    def _drop_planted(parent: int, name: str, problem: CorruptRecordError) -> None:
        """Unlink ``name`` if it is not a directory (it was planted); log either way."""
        logger.error("Skipping part of the user index: %s", problem)
        # unlink() never removes a directory nor follows a link.
        with suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            os.unlink(name, dir_fd=parent)
