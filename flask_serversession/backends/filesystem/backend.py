from __future__ import annotations

import math
import os
import re
import secrets
import stat
import typing as t
from datetime import datetime
from datetime import timedelta

from ...log import logger
from ..base import applied
from ..base import Backend
from ..base import check_size
from ..base import CorruptRecordError
from ..base import data_size
from ..base import Delta
from ..base import expected
from ..base import Record
from . import files as _files
from . import format as _format
from . import replace as _replace
from .handles import Handles
from .handles import Held
from .users import EMPTY_DIRECTORY_GRACE as _EMPTY_DIRECTORY_GRACE
from .users import UserIndex

_KEY = re.compile(r"[0-9a-f]{64}")
_SHARD = re.compile(r"[0-9a-f]{2}")
_MICROSECOND = timedelta(microseconds=1)


def _is_key(key: object) -> t.TypeGuard[str]:
    """Whether ``key`` is a storage key: only those become file names."""
    return isinstance(key, str) and _KEY.fullmatch(key) is not None


class FileSystemBackend(Backend):
    """Keep each session in its own file under ``directory``.

    A session lives in ``<directory>/<key[:2]>/<key>`` (directories 0700,
    files 0600): a header with a format version, the creation and expiry
    times and a CRC32, then the serialized values as a JSON object, or
    ``[user, values]`` for a session that has a user. Writes in a shard are
    serialized across threads and processes by ``fcntl.flock`` on the
    shard's ``.lock`` file, so several workers may share the directory. It
    needs ``fcntl`` (Linux, other POSIX systems; not Windows) and a local
    filesystem where ``flock`` works.

    The user index is an empty file ``users/<h[:2]>/<h>/<key>`` per session
    of a user, ``h`` being the sha256 of the user. It is written before the
    session file names the user and removed after, under the session shard's
    lock; :meth:`user_records` checks each session file and removes the
    entries that no longer match.

    Durability: a save writes a temporary file and swaps it in for the
    session file (see ``replace.py``), after the user index entry. A crashed
    or killed process never loses a save that returned, tears a file or
    drops a session from its user's index. By default nothing is flushed with ``os.fsync`` (as in
    cachelib's ``FileSystemCache`` and Django's file sessions), so a power
    loss may lose the last saves or leave them as older versions or corrupt
    records; ``fsync=True`` flushes files, index entries and directories,
    leaving only the last rename to be undone, at about twice the time per
    save.

    Only this process's user may own or write the directory, and nothing in
    it is followed through a symbolic link: a shard that is not a trusted
    directory holds no sessions (reading it raises ``CorruptRecordError``), a
    non-directory planted where a shard belongs is replaced when a session is
    created there, and any entry that is not a regular file of this user is a
    corrupt record.

    :param directory: where sessions are stored; created (0700) if missing.
    :param fsync: flush every write to the disk before a save returns, so
        that saves also survive a power loss. Default False.
    :raise PermissionError: when ``directory`` belongs to another user or
        others may write it.
    :raise OSError: when ``directory`` cannot be created or written.
    """

    #: Magic and format version at the start of a session file without a user.
    magic = _format.MAGIC
    #: Magic of the format whose body is ``[user, values]``.
    user_magic = _format.USER_MAGIC
    #: Name prefix of in-flight temporary files; never a valid key.
    temp_prefix = ".tmp-"

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        #: Whether writes are flushed with ``os.fsync`` before a save returns.
        self.fsync = fsync
        # Raises FileExistsError when the path exists but is not a directory.
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        with _files.Root(self.directory) as root:
            # Creating (and dropping) a file proves the directory is writable.
            probe = f"{self.temp_prefix}{secrets.token_hex(8)}.probe"
            os.close(os.open(probe, _files.TEMP_FLAGS, 0o600, dir_fd=root))
            os.unlink(probe, dir_fd=root)
        self._index = UserIndex(self.directory, fsync=fsync)
        # Loads and saves keep the directory and shards open (see handles.py).
        self._handles = Handles(self.directory)
        self._use = self._handles.use

    def close(self) -> None:
        self._handles.close()

    def _where(self, *names: str) -> str:
        return os.path.join(self.directory, *names)

    def _io(self, action: str) -> _files.Operation:
        """A context in which an OSError becomes a BackendError; ``with`` gives the
        trusted session directory, opened and checked once per operation."""
        return _files.Operation(self.directory, action)

    def _shard(self, root: int, name: str, *, lock: bool, create: bool = False) -> _files.Shard:
        return _files.Shard(root, name, self._where(name), lock=lock, create=create)

    def _locked_shard(self, root: int, key: str, *, create: bool = False) -> Held:
        """The shard of session ``key``, locked; None in ``with`` if it is missing."""
        return self._handles.shard(root, key[:2], lock=True, create=create)

    def _shards(self, root: int) -> t.Iterator[tuple[str, int]]:
        """Yield ``(name, descriptor)`` of every trusted shard; log the others."""
        with os.scandir(root) as entries:
            names = sorted(e.name for e in entries if _SHARD.fullmatch(e.name))
        for name in names:
            try:
                with self._shard(root, name, lock=False) as fd:
                    if fd is not None:
                        yield name, fd
            except CorruptRecordError as e:
                logger.error("Skipping a session shard: %s", e)

    def _load(self, fd: int, key: str) -> Record | None:
        path = self._where(key[:2], key)
        content = _files.read(fd, key, path, euid=self._handles.euid)
        return None if content is None else _format.record(path, content)

    def _expiry(self, fd: int, name: str, path: str) -> int | None:
        """Return the expiry in a session file's header; None if absent or unreadable."""
        try:
            return _format.header_expiry(_files.read(fd, name, path, _format.HEADER.size))
        except CorruptRecordError:
            return None

    def _save(
        self, fd: int, key: str, head: tuple[bytes, int, int], body: bytes, replace: bool = True
    ) -> None:
        """Write a session file; ``head`` is ``(magic, created_us, expires_us)``."""
        content = _format.pack(*head, body)
        _replace.write(fd, key, content, self.temp_prefix, fsync=self.fsync, replace=replace)

    def _stored(self, fd: int, key: str) -> Record | None:
        """Return the record of the session file ``key``; None if absent or damaged."""
        try:
            return self._load(fd, key)
        except CorruptRecordError:
            return None

    def _unmark(self, root: int, user: str | None, key: str) -> None:
        """Remove a user's index entry of ``key`` after its session stopped naming the user.

        A failure is logged, not raised: the write it follows has succeeded,
        and a stale entry is dropped when the user's sessions are listed.
        """
        if user is None:
            return
        try:
            self._index.remove(root, user, key)
        except (OSError, CorruptRecordError) as e:
            logger.error("Cannot remove a user index entry of session %s: %s", key, e)

    def _doomed(self, fd: int, name: str, now_us: int, far_us: int | None, before: float) -> bool:
        """Whether purge removes entry ``name``: expired, or damaged for too long.

        :param far_us: the furthest expiry a save may set; None for no limit.
        :param before: damaged entries last changed before this timestamp go.
        """
        path = self._where(name[:2], name)
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        expires = self._expiry(fd, name, path) if stat.S_ISREG(st.st_mode) else None
        if expires is not None:
            if expires <= now_us:
                return True
            if far_us is None or expires <= far_us:
                return False
            # No save sets an expiry this far ahead unless the file is damaged.
            try:
                content = _files.read(fd, name, path)
                if content is not None:
                    _format.record(path, content)
            except CorruptRecordError:
                return True
            return False
        # Not a session file we can read: keep it while a save could have
        # written it recently enough to still be live.
        return st.st_mtime < before

    def load(self, key: str) -> Record | None:
        if not _is_key(key):
            return None
        shard = self._handles.shard
        with self._use("read a session") as root, shard(root, key[:2], lock=False) as fd:
            return None if fd is None else self._load(fd, key)

    def create(self, key: str, record: Record) -> None:
        self._store(key, record, None)

    def add(self, key: str, record: Record, now: datetime) -> bool:
        return self._store(key, record, now)

    def _store(self, key: str, record: Record, now: datetime | None) -> bool:
        """Write ``record``; with ``now``, only if no record live at ``now`` is there."""
        # Only a sha256 hex digest may become a file name: no directory traversal.
        if not _is_key(key):
            raise ValueError(f"{key!r} is not a storage key (64 lowercase hex digits).")
        magic, body = _format.encode(record.user, record.data)
        head = (magic, _format.to_us(record.created_at), _format.to_us(record.expires_at))
        with self._use("save a session") as root, self._locked_shard(root, key, create=True) as fd:
            assert fd is not None
            there = self._stored(fd, key)
            if now is not None and there is not None and there.expires_at > now:
                return False
            old_user = None if there is None else there.user
            if record.user is not None:
                self._index.add(root, record.user, key)
            self._save(fd, key, head, body, replace=there is not None)
            if old_user != record.user:
                self._unmark(root, old_user, key)
            return True

    def update(self, key: str, delta: Delta, now: datetime) -> bool:
        return self._update(key, delta, now, None)

    def rewrite(self, key: str, expected: Record, delta: Delta, now: datetime) -> bool:
        return self._update(key, delta, now, expected)

    def _update(self, key: str, delta: Delta, now: datetime, as_read: Record | None) -> bool:
        if not _is_key(key):
            return False
        path = self._where(key[:2], key)
        try:
            with self._use("save a session") as root, self._locked_shard(root, key) as fd:
                if fd is None:
                    return False
                content = _files.read(fd, key, path, euid=self._handles.euid)
                if content is None:
                    return False
                magic, created, expires, body = _format.unpack(path, content)
                if expires <= _format.to_us(now):
                    return False
                user = new_user = None
                if as_read is not None:
                    user, old = _format.decode(path, magic, body)
                    if old != as_read.data or expires != _format.to_us(as_read.expires_at):
                        return False
                if delta.set or delta.deleted or delta.user_changed or delta.expect:
                    user, old = _format.decode(path, magic, body)
                    if not expected(old, delta):
                        return False
                    before = data_size(old)
                    data, after = applied(old, delta, before)
                    check_size(before, after, delta.max_size)
                    new_user = delta.user if delta.user_changed else user
                    if new_user is not None and delta.user_changed:
                        self._index.add(root, new_user, key)
                    magic, body = _format.encode(new_user, data)
                self._save(fd, key, (magic, created, _format.to_us(delta.expires_at)), body)
                if user != new_user:
                    self._unmark(root, user, key)
                return True
        except CorruptRecordError as e:
            logger.error("Session %s is corrupt, not updating it: %s", key, e)
            return False

    def take(self, key: str, now: datetime) -> Record | None:
        if not _is_key(key):
            return None
        path = self._where(key[:2], key)
        try:
            with self._use("take a session") as root, self._locked_shard(root, key) as fd:
                if fd is None:
                    return None
                try:
                    content = _files.read(fd, key, path)
                except CorruptRecordError:
                    _files.remove(fd, key)
                    raise
                if content is None:
                    return None
                _files.remove(fd, key)
                record = _format.record(path, content)
                self._unmark(root, record.user, key)
        except CorruptRecordError as e:
            logger.error("Session %s is corrupt, not taking it: %s", key, e)
            return None
        return record if record.expires_at > now else None

    def delete(self, key: str) -> None:
        if not _is_key(key):
            return
        try:
            with self._use("delete a session") as root, self._locked_shard(root, key) as fd:
                if fd is not None:
                    there = self._stored(fd, key)
                    user = None if there is None else there.user
                    _files.remove(fd, key)
                    self._unmark(root, user, key)
        except CorruptRecordError as e:
            # Nothing in an untrusted shard is ever loaded: the session is gone.
            logger.error("Session %s is in an untrusted place: %s", key, e)

    def purge_expired(self, now: datetime, *, longest_lifetime: timedelta | None = None) -> int:
        now_us, far_us, before = _format.to_us(now), None, -math.inf
        if longest_lifetime is not None:
            far_us = now_us + longest_lifetime // _MICROSECOND
            before = now.timestamp() - longest_lifetime.total_seconds()
        removed = 0
        with self._io("purge sessions") as root:
            if longest_lifetime is not None:
                _files.drop_planted(root, _SHARD, before, self.directory)
            for shard, fd in self._shards(root):
                names = _files.names(fd)
                sessions = [n for n in names if _KEY.fullmatch(n) and n[:2] == shard]
                doomed = [n for n in sessions if self._doomed(fd, n, now_us, far_us, before)]
                if not doomed and not any(n.startswith(self.temp_prefix) for n in names):
                    continue
                with _files.Locked(fd):
                    for name in doomed:
                        # Checked again under the lock: a save may have just happened.
                        if self._doomed(fd, name, now_us, far_us, before):
                            removed += _files.remove(fd, name)
                    for name in _files.names(fd):
                        if name.startswith(self.temp_prefix):
                            _files.remove(fd, name)
            self._index.sweep(root, grace=_EMPTY_DIRECTORY_GRACE)
        return removed

    def count(self, now: datetime) -> int:
        now_us = _format.to_us(now)
        live = 0
        with self._io("count sessions") as root:
            for shard, fd in self._shards(root):
                for name in _files.names(fd):
                    if _KEY.fullmatch(name) and name[:2] == shard:
                        expires = self._expiry(fd, name, self._where(shard, name))
                        if expires is not None and expires > now_us:
                            live += 1
        return live

    def items(self, now: datetime) -> t.Iterator[tuple[str, Record]]:
        with self._io("list sessions") as root:
            for shard, fd in self._shards(root):
                for name in _files.names(fd):
                    if not (_KEY.fullmatch(name) and name[:2] == shard):
                        continue
                    try:
                        record = self._load(fd, name)
                    except CorruptRecordError as e:
                        logger.error("Skipping corrupt session %s: %s", name, e)
                        continue
                    if record is not None and record.expires_at > now:
                        yield name, record

    def clear(self) -> int:
        removed = 0
        with self._io("clear sessions") as root:
            for shard, fd in self._shards(root):
                with _files.Locked(fd):
                    for name in _files.names(fd):
                        if _KEY.fullmatch(name) and name[:2] == shard:
                            try:
                                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                            except FileNotFoundError:
                                continue
                            if _files.remove(fd, name) and stat.S_ISREG(st.st_mode):
                                removed += 1
                        elif name.startswith(self.temp_prefix):
                            _files.remove(fd, name)
            self._index.sweep(root, grace=0.0)
        return removed

    def user_records(self, user: str, now: datetime) -> list[tuple[str, Record]]:
        """Return ``(key, record)`` of every live session of ``user``.

        Reads the session file behind each of the user's index entries and
        keeps those that are live and name ``user``. An entry found stale is
        checked again under its shard's lock and removed.
        """
        with self._io("list a user's sessions") as root:
            return self._index.records(root, user, now)
