"""condredirect newaddress program [arg...]: redirect when the program says so.

Runs as: the .qmail owner, under qmail-local.
The program runs on the message: exit 0 -> the message (DTLINE prepended,
envelope sender SENDER, not NEWSENDER, as qmail's condredirect does) is
queued to newaddress and condredirect exits 99, so qmail-local stops the
.qmail there; 111 -> 111; anything else -> 0 (deliver normally).
Exit:    99, 0, 111; 100 usage, variable missing or permanent queue error.
"""

from __future__ import annotations

import os
import sys

from pyqmail.cli.helpers import (
    EXIT_PERM,
    EXIT_TEMP,
    Fatal,
    fail,
    need_env,
    queue,
    read_message,
    run_child,
)

EXIT_STOP = 99


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if len(args) < 2:
            raise Fatal(EXIT_PERM, "usage: condredirect newaddress program [ arg ... ]")
        code = run_child(args[1:])
        if code == EXIT_TEMP:
            raise Fatal(EXIT_TEMP, "temporary child error")
        if code != 0:
            return 0
        sender = need_env("SENDER")
        dtline = need_env("DTLINE")
        qp = queue(sender, [os.fsencode(args[0])], dtline + read_message())
    except Fatal as exc:
        return fail("condredirect", exc)
    print(f"condredirect: qp {qp}", file=sys.stderr)
    return EXIT_STOP


if __name__ == "__main__":
    raise SystemExit(main())
