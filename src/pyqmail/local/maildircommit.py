"""Maildir copies written now, made durable together (group commit).

A copy is written into tmp/ first; then one sync makes the data of every
copy in the group durable, each is linked into new/ under its deterministic
name, and one more sync makes those names durable. Only then is any
delivery in the group reported done. A worker handling ten deliveries at
once pays two syncs (one syncfs(2) each, see unix/durable.py) instead of
twenty fsyncs. The order data-before-name stays what it is for a single
delivery: a name in new/ always points at complete, durable data.

A copy's tmp file is anonymous (O_TMPFILE, linked into new/ through
/proc/self/fd) where the system allows it: a worker killed mid-write leaves
nothing behind. Elsewhere it is a named tmp/ file, as in qmail.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

from pyqmail.unix import durable

# tests turn it off to cover the named tmp/ file path
USE_TMPFILE = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT}


class CopyError(OSError):
    """A copy could not be written; ``what`` says which step, for the report."""

    def __init__(self, what: str, exc: OSError) -> None:
        super().__init__(exc.errno, exc.strerror)
        self.what = what


@dataclass(slots=True)
class Copy:
    """One message copy on its way into a Maildir's new/."""

    rel: str  # the .qmail line, for reports
    newdir: str
    name: str
    fd: int = -1  # -1: nothing to write (an earlier attempt's copy is there)
    tmp: str | None = None  # None: anonymous tmp file
    error: str | None = None


def present(rel: str, base: str, name: str) -> Copy:
    """A copy an earlier attempt already delivered: only its name needs syncing."""
    return Copy(rel, os.path.join(base, "new"), name)


def write(rel: str, base: str, name: str, parts: Sequence[bytes]) -> Copy:
    """Write the parts into a new file under base/tmp/; not yet durable, not yet in new/."""
    global USE_TMPFILE
    tmpdir = os.path.join(base, "tmp")
    copy = Copy(rel, os.path.join(base, "new"), name)
    if USE_TMPFILE:
        try:
            copy.fd = os.open(tmpdir, os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            if exc.errno not in _NO_TMPFILE or not os.path.isdir(tmpdir):
                raise CopyError("open tmp file in", exc) from exc
            USE_TMPFILE = False  # this filesystem cannot: named files from now on
    if copy.fd < 0:
        copy.tmp = os.path.join(tmpdir, f"{name}.{os.getpid()}")
        try:
            durable.unlink_quiet(copy.tmp)  # a killed earlier worker with our pid
            copy.fd = durable.create_exclusive(copy.tmp, 0o600)
        except OSError as exc:
            raise CopyError("open tmp file in", exc) from exc
    try:
        _write_parts(copy.fd, parts)
    except OSError as exc:
        discard(copy)
        raise CopyError("write to", exc) from exc
    return copy


def _write_parts(fd: int, parts: Sequence[bytes]) -> None:
    total = sum(len(p) for p in parts)
    done = os.writev(fd, parts)
    if done < total:
        durable.write_all(fd, b"".join(parts)[done:])


def discard(copy: Copy) -> None:
    if copy.fd >= 0:
        os.close(copy.fd)
        copy.fd = -1
    if copy.tmp is not None:
        durable.unlink_quiet(copy.tmp)
        copy.tmp = None


def commit(copies: Sequence[Copy]) -> None:
    """Make every copy durable in its new/; a copy that fails gets ``error`` set.

    On return each copy without an error is in new/ under its name, its data
    and that name on disk. A failed copy is reported as a temporary failure;
    the retry recognises whatever reached new/ (DESIGN 1a).
    """
    written = [c for c in copies if c.fd >= 0 and c.error is None]
    try:
        try:
            _sync_files([c.fd for c in written])
        except OSError as exc:
            for c in written:
                c.error = f"Unable to write to {c.rel}: {exc.strerror}. (#4.3.0)"
            return
        for c in written:
            try:
                _link(c)
            except FileExistsError:
                pass  # an earlier attempt got here first: that copy is the delivery
            except OSError as exc:
                c.error = f"Unable to write to {c.rel}: {exc.strerror}. (#4.3.0)"
        ok = [c for c in copies if c.error is None]
        try:
            _sync_dirs(sorted({c.newdir for c in ok}))
        except OSError as exc:
            for c in ok:
                c.error = f"Unable to write to {c.rel}: {exc.strerror}. (#4.3.0)"
    finally:
        for c in written:
            discard(c)


def _link(copy: Copy) -> None:
    new = os.path.join(copy.newdir, copy.name)
    if copy.tmp is not None:
        os.link(copy.tmp, new)
    else:
        # with a src_dir_fd os.link is linkat(AT_SYMLINK_FOLLOW): the magic
        # link /proc/self/fd/N names the open file itself
        os.link(str(copy.fd), new, src_dir_fd=_proc_fds())


_proc_fd = -1  # this process's /proc/self/fd, opened at first use


def _forget_proc_fd() -> None:
    global _proc_fd
    _proc_fd = -1  # a forked child has its own /proc/self/fd (the inherited one is the parent's)


os.register_at_fork(after_in_child=_forget_proc_fd)


def _proc_fds() -> int:
    global _proc_fd
    if _proc_fd < 0:
        _proc_fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    return _proc_fd


def _sync_files(fds: list[int]) -> None:
    if len(fds) == 1:
        durable.sync_fd(fds[0])
    elif fds:
        durable.fsync_fds_and_dirs(fds, ())


def _sync_dirs(dirs: list[str]) -> None:
    if len(dirs) == 1:
        durable.sync_dir(dirs[0])
    elif dirs:
        durable.fsync_fds_and_dirs((), dirs)
