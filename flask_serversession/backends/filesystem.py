from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import struct
import tempfile
import typing as t
import zlib
from contextlib import contextmanager
from contextlib import suppress
from datetime import datetime
from datetime import timedelta
from datetime import timezone

from ..errors import BackendError
from .base import Backend
from .base import CorruptRecordError
from .base import Delta
from .base import logger
from .base import Record

_KEY = re.compile(r"[0-9a-f]{64}")
_SHARD = re.compile(r"[0-9a-f]{2}")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def _to_us(value: datetime) -> int:
    return (value - _EPOCH) // _MICROSECOND


def _from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _is_session(shard: str, name: str) -> bool:
    return _KEY.fullmatch(name) is not None and name[:2] == os.path.basename(shard)


class FileSystemBackend(Backend):
    """Keep each session in its own file under ``directory``.

    A session lives in ``<directory>/<key[:2]>/<key>`` (directories 0700,
    files 0600): a header with a format version, the creation and expiry
    times and a CRC32, then the serialized values as a JSON object. Writes
    in a shard are serialized across threads and processes by ``fcntl.flock``
    on the shard's ``.lock`` file, so several workers may share the
    directory. It needs ``fcntl`` (Linux, other POSIX systems; not Windows) and
    a local filesystem where ``flock`` works.

    :param directory: where sessions are stored; created if missing.
    :raise OSError: when ``directory`` cannot be created or written.
    """

    #: Magic and format version at the start of every session file.
    magic = b"FSS\x01"
    #: Name prefix of in-flight temporary files; never a valid key.
    temp_prefix = ".tmp-"

    _header = struct.Struct(">4sqqI")

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        # Raises FileExistsError when the path exists but is not a directory.
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        # Creating (and dropping) an anonymous file proves the directory is writable.
        with tempfile.TemporaryFile(dir=self.directory):
            pass

    def _shard(self, key: str) -> str:
        return os.path.join(self.directory, key[:2])

    def _path(self, key: str) -> str | None:
        # Only a sha256 hex digest may become a path: no directory traversal.
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            return None
        return os.path.join(self.directory, key[:2], key)

    def _shards(self) -> list[str]:
        try:
            with os.scandir(self.directory) as entries:
                return sorted(
                    e.path
                    for e in entries
                    if _SHARD.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
                )
        except OSError as e:
            raise BackendError(f"Cannot list session directory {self.directory!r}: {e}") from e

    @staticmethod
    def _names(shard: str) -> list[str]:
        try:
            with os.scandir(shard) as entries:
                return [e.name for e in entries]
        except FileNotFoundError:
            return []
        except OSError as e:
            raise BackendError(f"Cannot list session directory {shard!r}: {e}") from e

    @contextmanager
    def _locked(self, shard: str, *, create: bool = False) -> t.Iterator[bool]:
        """Hold the shard's lock; yield False (unlocked) if the shard does not exist."""
        lock = os.path.join(shard, ".lock")
        try:
            try:
                fd = os.open(lock, _LOCK_FLAGS, 0o600)
            except FileNotFoundError:
                if not create:
                    fd = -1
                else:
                    with suppress(FileExistsError):
                        os.mkdir(shard, 0o700)
                    fd = os.open(lock, _LOCK_FLAGS, 0o600)
        except OSError as e:
            raise BackendError(f"Cannot open session lock {lock!r}: {e}") from e
        if fd < 0:
            yield False
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield True
        finally:
            # Closing the only descriptor of this open file releases the lock.
            os.close(fd)

    def _read(self, path: str) -> tuple[int, int, bytes] | None:
        """Return ``(created_us, expires_us, body)`` of a session file, or None if absent."""
        try:
            fd = os.open(path, _READ_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise CorruptRecordError(f"{path!r} is a symbolic link, not a session") from e
            raise BackendError(f"Cannot read session file {path!r}: {e}") from e
        try:
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    raise CorruptRecordError(f"{path!r} is not a regular file")
                with open(fd, "rb", closefd=False) as f:
                    content = f.read()
            finally:
                os.close(fd)
        except OSError as e:
            raise BackendError(f"Cannot read session file {path!r}: {e}") from e
        size = self._header.size
        if len(content) < size:
            raise CorruptRecordError(f"{path!r} is truncated ({len(content)} bytes)")
        magic, created, expires, crc = self._header.unpack_from(content)
        if magic != self.magic:
            raise CorruptRecordError(f"{path!r} has an unknown format {magic!r}")
        if zlib.crc32(content[len(magic) : size - 4] + content[size:]) != crc:
            raise CorruptRecordError(f"{path!r} fails its checksum")
        return created, expires, content[size:]

    def _read_expiry(self, path: str) -> int | None:
        """Return the expiry of a session file from its header, None if absent or corrupt."""
        try:
            fd = os.open(path, _READ_FLAGS)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ELOOP):
                return None
            raise BackendError(f"Cannot read session file {path!r}: {e}") from e
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            header = os.read(fd, self._header.size)
        except OSError as e:
            raise BackendError(f"Cannot read session file {path!r}: {e}") from e
        finally:
            os.close(fd)
        if len(header) < self._header.size:
            return None
        magic, _created, expires, _crc = self._header.unpack(header)
        return expires if magic == self.magic else None

    @staticmethod
    def _decode(path: str, body: bytes) -> dict[str, str]:
        try:
            data = json.loads(body)
        except ValueError as e:
            raise CorruptRecordError(f"{path!r} holds no valid JSON: {e}") from e
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise CorruptRecordError(f"{path!r} does not hold an object of strings")
        return data

    def _record(self, path: str) -> Record | None:
        found = self._read(path)
        if found is None:
            return None
        created, expires, body = found
        data = self._decode(path, body)
        try:
            return Record(data, _from_us(created), _from_us(expires))
        except OverflowError as e:
            raise CorruptRecordError(f"{path!r} holds an impossible time") from e

    def _write(self, path: str, created: int, expires: int, body: bytes) -> None:
        """Replace ``path`` atomically; the caller holds the shard's lock."""
        # A save never writes into the session file itself: it writes a temp
        # file in the same directory, fsyncs it and renames it over the old
        # one. rename() is atomic, so a reader without the lock, a crash or a
        # full disk leaves the old file or the new one, never a torn one, and a
        # symlink planted at ``path`` is replaced, not written through. Every
        # writer of a shard holds its lock from mkstemp to rename, so a temp
        # file seen by someone holding the lock is a crash leftover, and purge
        # can remove it at once without an age threshold. We do not fsync the
        # directory: after a power loss the rename may be lost, which gives the
        # previous version of the session, not a broken one.
        times = struct.pack(">qq", created, expires)
        header = self._header.pack(self.magic, created, expires, zlib.crc32(times + body))
        shard = os.path.dirname(path)
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=self.temp_prefix, suffix=".part", dir=shard)
            try:
                view = memoryview(header + body)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            if tmp is not None:
                with suppress(OSError):
                    os.unlink(tmp)
            raise BackendError(f"Cannot save session file {path!r}: {e}") from e

    @staticmethod
    def _encode(data: t.Mapping[str, str]) -> bytes:
        return json.dumps(data, separators=(",", ":")).encode("ascii")

    def load(self, key: str) -> Record | None:
        path = self._path(key)
        return None if path is None else self._record(path)

    def create(self, key: str, record: Record) -> None:
        path = self._path(key)
        if path is None:
            raise ValueError(f"{key!r} is not a storage key (64 lowercase hex digits).")
        body = self._encode(record.data)
        created, expires = _to_us(record.created_at), _to_us(record.expires_at)
        with self._locked(self._shard(key), create=True):
            self._write(path, created, expires, body)

    def update(self, key: str, delta: Delta, now: datetime) -> bool:
        path = self._path(key)
        if path is None:
            return False
        with self._locked(self._shard(key)) as locked:
            if not locked:
                return False
            try:
                found = self._read(path)
                if found is None or found[1] <= _to_us(now):
                    return False
                created, _expires, body = found
                if delta.set or delta.deleted:
                    data = self._decode(path, body)
                    for name in delta.deleted:
                        data.pop(name, None)
                    data.update(delta.set)
                    body = self._encode(data)
            except CorruptRecordError as e:
                logger.error("Session file %s is corrupt, not updating it: %s", path, e)
                return False
            self._write(path, created, _to_us(delta.expires_at), body)
            return True

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path is None:
            return
        with self._locked(self._shard(key)) as locked:
            if not locked:
                return
            try:
                os.unlink(path)
            except (FileNotFoundError, IsADirectoryError):
                pass
            except OSError as e:
                raise BackendError(f"Cannot delete session file {path!r}: {e}") from e

    def _unlink(self, path: str) -> bool:
        try:
            os.unlink(path)
        except (FileNotFoundError, IsADirectoryError):
            return False
        except OSError as e:
            raise BackendError(f"Cannot delete session file {path!r}: {e}") from e
        return True

    def purge_expired(self, now: datetime) -> int:
        now_us = _to_us(now)
        removed = 0
        for shard in self._shards():
            names = self._names(shard)
            expired = []
            for name in names:
                if _is_session(shard, name):
                    expires = self._read_expiry(os.path.join(shard, name))
                    if expires is not None and expires <= now_us:
                        expired.append(name)
            temps = any(n.startswith(self.temp_prefix) for n in names)
            if not expired and not temps:
                continue
            with self._locked(shard) as locked:
                if not locked:
                    continue
                for name in expired:
                    # Checked again under the lock: a renewal may have just happened.
                    path = os.path.join(shard, name)
                    expires = self._read_expiry(path)
                    if expires is not None and expires <= now_us and self._unlink(path):
                        removed += 1
                for name in self._names(shard):
                    if name.startswith(self.temp_prefix):
                        self._unlink(os.path.join(shard, name))
        return removed

    def count(self, now: datetime) -> int:
        now_us = _to_us(now)
        live = 0
        for shard in self._shards():
            for name in self._names(shard):
                if _is_session(shard, name):
                    expires = self._read_expiry(os.path.join(shard, name))
                    if expires is not None and expires > now_us:
                        live += 1
        return live

    def items(self, now: datetime) -> t.Iterator[tuple[str, Record]]:
        for shard in self._shards():
            for name in sorted(self._names(shard)):
                if not _is_session(shard, name):
                    continue
                path = os.path.join(shard, name)
                try:
                    record = self._record(path)
                except CorruptRecordError as e:
                    logger.error("Skipping corrupt session file %s: %s", path, e)
                    continue
                if record is not None and record.expires_at > now:
                    yield name, record

    def clear(self) -> int:
        removed = 0
        for shard in self._shards():
            with self._locked(shard) as locked:
                if not locked:
                    continue
                for name in self._names(shard):
                    path = os.path.join(shard, name)
                    if _is_session(shard, name):
                        try:
                            regular = stat.S_ISREG(os.lstat(path).st_mode)
                        except FileNotFoundError:
                            continue
                        except OSError as e:
                            raise BackendError(f"Cannot inspect {path!r}: {e}") from e
                        if self._unlink(path) and regular:
                            removed += 1
                    elif name.startswith(self.temp_prefix):
                        self._unlink(path)
        return removed
