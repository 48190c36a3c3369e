"""forward address...: queue the message to the addresses, as qmail's forward.

Runs as: the .qmail owner, under qmail-local (fd 0 the message, NEWSENDER
         and DTLINE in the environment).
Writes:  one new message through the queue writer: DTLINE + the message,
         envelope sender NEWSENDER.
Exit:    0 (``forward: qp N`` on stderr); 100 usage, variable missing or
         permanent queue error; 111 temporary.
"""

from __future__ import annotations

import os
import sys

from pyqmail.cli.helpers import EXIT_PERM, Fatal, fail, need_env, queue, read_message


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if not args:
            raise Fatal(EXIT_PERM, "usage: forward address [...]")
        sender = need_env("NEWSENDER")
        dtline = need_env("DTLINE")
        qp = queue(sender, [os.fsencode(a) for a in args], dtline + read_message())
    except Fatal as exc:
        return fail("forward", exc)
    print(f"forward: qp {qp}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
