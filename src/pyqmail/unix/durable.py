"""Durability: the one place that writes, fsyncs, links and renames.

Every acknowledgement in pyqmail rests on these calls: data is fsynced
before the name that makes it visible is linked, and the directory holding
that name is fsynced before anyone is told.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

# Concurrent fsyncs on one filesystem share a journal commit: a batch of N
# files costs about one fsync, not N. Only these helpers use the pool, made
# at the first batch: concurrent.futures (with logging and threading) is
# ~2.5 MB that clean and lspawn, which never batch, need not carry.
_pool: ThreadPoolExecutor | None = None


def _batch() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="fsync")
    return _pool


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dirs(paths: Iterable[str]) -> None:
    """fsync each distinct directory, in parallel."""
    list(_batch().map(fsync_dir, sorted(set(paths))))


def fsync_fds(fds: Sequence[int]) -> None:
    """fsync every fd, in parallel; raises the first error."""
    list(_batch().map(os.fsync, fds))


def fsync_fds_and_dirs(fds: Sequence[int], dirs: Iterable[str]) -> None:
    """fsync files and directories all at once: one journal commit, not two.

    For callers whose only ordering need is "all of these before the next
    step" (data and the names pointing at it, before a rename publishes them).
    """
    list(_batch().map(_fsync_one, [*fds, *sorted(set(dirs))]))


def _fsync_one(target: int | str) -> None:
    if isinstance(target, int):
        os.fsync(target)
    else:
        fsync_dir(target)


def create_exclusive(path: str, mode: int = 0o600) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)


def unlink_quiet(path: str) -> bool:
    """Unlink; True if it was there. Missing is fine, other errors raise."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
