"""Locking an mbox the way its readers expect: flock and fcntl (POSIX) locks both.

qmail-local takes one exclusive lock (flock or lockf, per system); mail
readers differ (mutt and procmail use fcntl, others flock), so pyqmail takes
both. Neither is held while waiting for the other, so a reader taking them in
the other order cannot deadlock with us. A lock the filesystem cannot give
(ENOLCK on some NFS setups) is skipped, as qmail continues unlocked.
"""

from __future__ import annotations

import fcntl
import time

POLL_S = 0.1


class LockTimeout(Exception):
    pass


def lock_mbox(fd: int, wait_s: float) -> None:
    """Both exclusive locks on fd, or LockTimeout after wait_s seconds of trying."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        except OSError:
            pass  # no flock here: fcntl alone
        else:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                fcntl.flock(fd, fcntl.LOCK_UN)
            except OSError:
                return  # no fcntl locks here: flock alone
        if time.monotonic() > deadline:
            raise LockTimeout(f"locked for {wait_s:g} seconds straight")
        time.sleep(POLL_S)
