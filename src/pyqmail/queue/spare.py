"""Spare queue files: the inodes of finished messages, reused for new ones.

Every message costs the queue two new files (mess/S/N and intd/N, which
becomes todo/N) and, when it is done, two unlinks. Creating a file means
allocating an inode and freeing one makes a hole the allocator has to step
over: on an ext4 without a journal the allocator skips every inode freed
in the last 5 to 300 seconds, checked one at a time, so at a thousand
messages a second most of the queue's kernel time went to that scan
(`perf` showed a quarter of all CPU in ``recently_deleted``). Elsewhere a
new inode still costs its allocation, its first blocks and, freed, a
discard.

So clean does not unlink a finished message's files: it renames them into
queue/spare/ (``m`` + N for a body, ``e`` + N for an envelope), and the
writer takes a spare, renames it to its new name, overwrites it and cuts it
to length, before the same sync and the same rename to todo/N that a new
file gets. A spare is garbage until then: nothing reads queue/spare/, and
a crash leaves at worst an unpublished intd/N or mess/S/N that the
writer's start-up removes, as it would a new file.

A body is only reused when nothing else can still read it: clean takes a
write lease (F_SETLEASE), which the kernel grants only while no other
process has the file open. A program run by a .qmail line gets the message
as its stdin and may leave a child holding it; that message's body is
unlinked, not reused, so no later message can show up in it. Envelopes are
read only by send and the operator's queue tools, and need no lease. No
file with a second link, or not owned by the queue's user, is reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time

from pyqmail.config import Home
from pyqmail.unix import durable

BODY, ENVELOPE = "m", "e"
KEEP = 4096  # spares of one kind the writer keeps; more are unlinked
RELIST_S = 0.2  # the writer lists spare/ at most this often when it ran out


def spare_dir(home: Home) -> str:
    return home.q("spare")


def retire(home: Home, path: str, kind: str, msg_id: int) -> bool:
    """Remove a finished message's file: into spare/ if it can be reused,
    else unlinked. True if it was there.

    An envelope (todo/N) is only ever read by send, which closes it at once,
    and by the operator's queue tools: it needs no lease, only to be ours,
    plain and with one name. A body may be held by a .qmail program's child.
    """
    if kind == ENVELOPE:
        try:
            reusable = _ours(os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            return False
        except OSError:
            reusable = False
    else:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return False
        except OSError:
            return durable.unlink_quiet(path)
        try:
            reusable = _alone(fd)
        finally:
            os.close(fd)
    if reusable:
        try:
            os.rename(path, os.path.join(spare_dir(home), f"{kind}{msg_id}"))
        except FileNotFoundError:
            # gone meanwhile, or no spare/ (a home made before it existed)
            return durable.unlink_quiet(path)
        return True
    return durable.unlink_quiet(path)


def _ours(st: os.stat_result) -> bool:
    """A plain file with one name, owned by this process's user."""
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == _euid()


def _alone(fd: int) -> bool:
    """True if fd's file is ours (_ours) and open nowhere else."""
    try:
        if not _ours(os.fstat(fd)):
            return False
        # granted only if no other open file description refers to the file
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except OSError:
        return False
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return True


_uid = -1


def _euid() -> int:
    global _uid
    if _uid < 0:
        _uid = os.geteuid()  # a component never changes uid once running
    return _uid


class Spares:
    """The writer's side: hands out spare files under new names."""

    def __init__(self, home: Home) -> None:
        self.dir = spare_dir(home)
        self._names: dict[str, list[str]] = {BODY: [], ENVELOPE: []}
        self._listed_at = -RELIST_S
        self.reused = 0
        with contextlib.suppress(OSError):
            os.makedirs(self.dir, mode=0o700, exist_ok=True)

    def take(self, kind: str, dest: str) -> int:
        """An fd open for writing on a spare now named dest, or -1 if none.

        The caller overwrites it from offset 0 and must cut it to the new
        length (truncate). dest must not exist: FileExistsError if it does.
        """
        if not self._names[kind]:
            self._relist()
        names = self._names[kind]
        while names:
            src = os.path.join(self.dir, names.pop())
            try:
                durable.rename_noreplace(src, dest)
            except FileNotFoundError:
                continue  # removed by hand; the next one
            except FileExistsError:
                raise
            except OSError:
                return -1  # dest on another filesystem, say: a new file will do
            try:
                fd = os.open(dest, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                durable.unlink_quiet(dest)
                continue
            self.reused += 1
            return fd
        return -1

    def _relist(self) -> None:
        now = time.monotonic()
        if now - self._listed_at < RELIST_S:
            return
        self._listed_at = now
        try:
            listed = os.listdir(self.dir)
        except OSError:
            return
        # the listing is the whole truth: it replaces what was left of both kinds
        for kind in self._names:
            names = [n for n in listed if n[:1] == kind and n[1:].isdigit()]
            for extra in names[KEEP:]:
                durable.unlink_quiet(os.path.join(self.dir, extra))
            self._names[kind] = names[:KEEP]
