"""qmail-getpw local: which passwd user gets mail for a local part.

Runs as: qmailp in qmail; anyone here. Reads the passwd database and the
         home directories' owners; nothing else.
Writes:  six NUL-terminated fields on fd 1: user, uid, gid, home, dash, ext.
Rules:   qmail-files §4: the whole local part, then each prefix ending
         before a '-', longest first (lowercased, under 32 bytes); a user
         with uid 0, a missing home or a home it does not own is skipped.
         No hit: the alias user (local/users.alias_user, lspawn's rule
         too), dash '-', ext = the whole local part.
Exit:    0; 100 no argument; 115 a temporary error checking a home
         directory; 116 no alias user.
"""

from __future__ import annotations

import errno
import os
import sys

from pyqmail.config import Home
from pyqmail.local.users import alias_user, getpw

EXIT_NFS = 115  # QLX_NFS
EXIT_NOALIAS = 116  # QLX_NOALIAS
TEMPORARY = frozenset(
    {
        errno.EINTR,
        errno.ENOMEM,
        errno.ETXTBSY,
        errno.EIO,
        errno.ETIMEDOUT,
        errno.EAGAIN,
        errno.ENFILE,
        errno.EMFILE,
        errno.ESTALE,
        errno.ENOLCK,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
    }
)


class _Temporary(Exception):
    pass


def _stat_error(exc: OSError) -> None:
    if exc.errno in TEMPORARY:
        raise _Temporary from exc


def main() -> int:
    if len(sys.argv) < 2:
        return 100
    local = sys.argv[1]
    try:
        hit = getpw(local, _stat_error) or alias_user(Home.from_env(), local)
    except _Temporary:
        return EXIT_NFS
    if hit is None:
        return EXIT_NOALIAS
    fields = (hit.user, str(hit.uid), str(hit.gid), hit.home, hit.dash, hit.ext)
    out = b"".join(os.fsencode(f) + b"\0" for f in fields)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
