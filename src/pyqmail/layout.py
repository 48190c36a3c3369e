"""The shape of a qmail home: which directories exist, and how to make them."""

from __future__ import annotations

import contextlib
import os

from pyqmail.config import SPLIT, Home

SPLIT_DIRS = ("mess", "info", "local", "remote")
FLAT_DIRS = ("intd", "todo", "bounce", "lock", "pid")


def make_queue(home: Home) -> None:
    """Create queue/ with qmail's layout; existing parts are left alone."""
    for name in FLAT_DIRS:
        os.makedirs(home.q(name), mode=0o750, exist_ok=True)
    for name in SPLIT_DIRS:
        for n in range(SPLIT):
            os.makedirs(home.q(name, str(n)), mode=0o750, exist_ok=True)
    # operator holds (send's); not in FLAT_DIRS so older homes still pass queue_ok
    os.makedirs(home.q("hold"), mode=0o700, exist_ok=True)
    # finished messages' files, for the writer to reuse (queue/spare.py); the
    # writer makes it too, for homes made before it existed
    os.makedirs(home.q("spare"), mode=0o700, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkfifo(home.trigger, 0o622)


def queue_ok(home: Home) -> str | None:
    """None if the queue looks complete, else what is missing."""
    for name in FLAT_DIRS:
        if not os.path.isdir(home.q(name)):
            return f"missing {home.q(name)}"
    for name in SPLIT_DIRS:
        for n in range(SPLIT):
            if not os.path.isdir(home.q(name, str(n))):
                return f"missing {home.q(name, str(n))}"
    return None
