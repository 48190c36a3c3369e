"""Resource limits set between fork and exec of each component.

qmail installations wrap the network servers in ``softlimit``; pyqmail does
the same itself so no operator can forget it. A bug that makes a listener
allocate without bound hits ``memorylimit`` and that one process dies (and
is restarted); it cannot take the machine or the queue down with it.
"""

from __future__ import annotations

import resource
from collections.abc import Callable

from pyqmail.config import Home, read_control
from pyqmail.formats import control

DEFAULT_MEMORY = 2 << 30  # bytes of address space for a network-facing process
DEFAULT_FILES = 4096  # open descriptors: connections plus a few files each
DEFAULT_PROCS = 256  # per uid, only when that uid is the component's own


def limiter(home: Home, network_facing: bool, own_uid: bool) -> Callable[[], None]:
    """A preexec_fn that applies the limits; values are read now, not after fork."""
    memory = control.parse_int(read_control(home, "memorylimit"), DEFAULT_MEMORY)
    files = control.parse_int(read_control(home, "filelimit"), DEFAULT_FILES)

    def apply() -> None:
        # mail passes through every component: a core dump would leak it
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if not network_facing:
            return
        if memory > 0:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        _lower(resource.RLIMIT_NOFILE, files)
        if own_uid:  # a per-uid count: only safe when the uid is this component's alone
            _lower(resource.RLIMIT_NPROC, DEFAULT_PROCS)

    return apply


def _lower(which: int, value: int) -> None:
    _soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))
