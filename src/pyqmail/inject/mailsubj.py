"""mailsubj subject recipient...: send fd 0 with that Subject to those recipients.

qmail's shell script: ``Subject:`` and ``To:`` lines (recipients joined by
spaces, which qmail-inject turns into an address list), a blank line, then
fd 0, all through qmail-inject.
"""

from __future__ import annotations

import os
import sys

from pyqmail.config import Home
from pyqmail.inject import main as inject
from pyqmail.inject.predate import prefixed


def main() -> int:
    args = [os.fsencode(a) for a in sys.argv[1:]]
    subject = args[0] if args else b""
    to = b"".join(b" " + a for a in args[1:])  # echo To: "$@"
    head = b"Subject: " + subject + b"\nTo:" + to + b"\n\n"
    stdin = prefixed(head, sys.stdin.buffer)
    return inject.run(
        ["qmail-inject"], dict(os.environb), stdin, sys.stdout.buffer, Home.from_env()
    )


if __name__ == "__main__":
    raise SystemExit(main())
