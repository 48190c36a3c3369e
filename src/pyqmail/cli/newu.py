"""qmail-newu: compile users/assign into users/cdb (qmail-programs §4).

Runs as: root (or the home's owner in embedded mode).
Reads:   users/assign.
Writes:  users/cdb.tmp, fsynced, then renamed over users/cdb: a reader sees
         the old database or the new one, never half of one.
Exit:    0 done; 111 on any trouble (bad users/assign line, I/O), and the
         old users/cdb is kept.
"""

from __future__ import annotations

import os
import sys

import cdblib

from pyqmail.config import Home
from pyqmail.formats.assign import parse_assign
from pyqmail.formats.control import ControlError
from pyqmail.formats.userscdb import records
from pyqmail.unix import durable

MAX_ASSIGN_BYTES = 1 << 28


def compile_users(home: Home) -> int:
    """Write users/cdb from users/assign; returns the number of assignments."""
    with open(home.assign, encoding="utf-8", errors="surrogateescape") as fh:
        text = fh.read(MAX_ASSIGN_BYTES + 1)
    if len(text) > MAX_ASSIGN_BYTES:
        raise ControlError(home.assign, 0, f"over {MAX_ASSIGN_BYTES} bytes")
    assign = parse_assign(text, path=home.assign)
    target = home.users_cdb
    tmp = target + ".tmp"
    with open(tmp, "wb") as out:
        writer = cdblib.Writer(out)
        for key, value in records(assign):
            writer.put(key, value)
        writer.finalize()
        out.flush()
        os.fsync(out.fileno())
    os.chmod(tmp, 0o644)
    os.rename(tmp, target)
    durable.fsync_dir(os.path.dirname(target))
    return len(assign.exact) + len(assign.prefix)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        print("qmail-newu: usage: qmail-newu (QMAILHOME names the home)", file=sys.stderr)
        return 100
    home = Home.from_env()
    try:
        compile_users(home)
    except ControlError as exc:
        print(f"qmail-newu: fatal: {exc}", file=sys.stderr)
        return 111
    except OSError as exc:
        print(f"qmail-newu: fatal: {exc.filename or home.assign}: {exc.strerror}", file=sys.stderr)
        return 111
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
