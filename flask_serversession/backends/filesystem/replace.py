"""Replace a session file in one atomic step: a temp file, then a swap or a rename.

The swap is Linux ``renameat2(RENAME_EXCHANGE)``. Why not ``rename`` over
the old file: ext4 (with its default ``auto_da_alloc``) starts writing a
file's data out whenever it is renamed over an existing one, as a guard for
programs that forget ``fsync``: on the VM the benchmarks ran on, writing
a small file and renaming it over another took about 230 µs, writing it and
swapping it in (and unlinking the old one) about 60 µs, and the gap grows
with the load on the disk. An exchange swaps the new file in as atomically
(a reader sees the old file or the new one) without that write-out; the old
file, now under the temporary name, is then unlinked. Where the call is
missing (not Linux, an old C library, a filesystem that refuses it)
:func:`exchange` says so and the caller renames.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
import typing as t
from contextlib import suppress

from .files import remove
from .files import TEMP_FLAGS

RENAME_EXCHANGE = 2
# What renameat2 reports when it cannot exchange these two entries here.
_CANNOT = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOENT, errno.EXDEV}


def _renameat2() -> t.Callable[[int, bytes, int, bytes, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    c_int, c_path = ctypes.c_int, ctypes.c_char_p
    function.argtypes = [c_int, c_path, c_int, c_path, ctypes.c_uint]
    function.restype = ctypes.c_int
    return t.cast("t.Callable[[int, bytes, int, bytes, int], int]", function)


_call = _renameat2()


def exchange(dir_fd: int, first: str, second: str) -> bool:
    """Swap entries ``first`` and ``second`` of directory ``dir_fd``.

    Returns False, having changed nothing, when the exchange cannot be made
    here (no such call, a filesystem without it, ``second`` missing).

    :raise OSError: any other failure.
    """
    global _call
    call = _call
    if call is None:
        return False
    if call(dir_fd, os.fsencode(first), dir_fd, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code == errno.ENOSYS:
        _call = None
    if code in _CANNOT:
        return False
    raise OSError(code, os.strerror(code), second)


def write(
    dir_fd: int, name: str, content: bytes, prefix: str, *, fsync: bool, replace: bool = True
) -> None:
    """Replace file ``name`` (0600) with ``content`` in one atomic step.

    The caller holds the directory's lock. ``fsync`` flushes the content to
    the disk before the rename, so that a power loss cannot leave a renamed
    but empty or torn file. ``replace`` says that ``name`` is likely there:
    the new file is then swapped in (see :func:`exchange`) rather than
    renamed over it.
    """
    # A save never writes into the session file itself: it writes a temp
    # file in the same directory, optionally fsyncs it and renames it over
    # the old one. rename() is atomic, so a reader without the lock, a
    # process crash or a full disk leaves the old file or the new one, never
    # a torn one, and a symlink planted at ``name`` is replaced, not written
    # through. Every writer of a shard holds its lock from creating the temp
    # file to the rename, so a temp file seen by someone holding the lock is
    # a crash leftover, and purge can remove it at once without an age
    # threshold. We never fsync the directory: after a power loss the rename
    # may be lost, which gives the previous version of the session. Without
    # ``fsync``, a power loss may also leave the new file empty or torn,
    # which a read reports as a corrupt record.
    # An exchange is as atomic as the rename, and what it leaves under the
    # temp name (the old file) is removed while the lock is still held; a
    # crash in between leaves a temp file, as one before the rename does.
    # The temp file's name is the session's: only the lock's holder writes
    # one, so a file already there is a crash leftover, removed at once.
    temp = f"{prefix}{name}.part"
    try:
        fd = os.open(temp, TEMP_FLAGS, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        remove(dir_fd, temp)
        fd = os.open(temp, TEMP_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(content)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        if not (replace and exchange(dir_fd, temp, name)):
            os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return
    except BaseException:
        with suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise
    # The save is done; a failure to drop the old file leaves a crash leftover.
    with suppress(OSError):
        remove(dir_fd, temp)
