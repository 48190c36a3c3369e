"""qmail-qstat: how many messages are queued, and how many not yet preprocessed."""

from __future__ import annotations

import os
import sys

from pyqmail.config import SPLIT, Home


def main() -> int:
    home = Home.from_env()
    try:
        total = sum(len(os.listdir(home.q("mess", str(n)))) for n in range(SPLIT))
        todo = len(os.listdir(home.q("todo")))
    except OSError as exc:
        print(f"qmail-qstat: fatal: {exc}", file=sys.stderr)
        return 111
    print(f"messages in queue: {total}")
    print(f"messages in queue but not yet preprocessed: {todo}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
