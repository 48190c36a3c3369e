"""maildirmake DIR: a Maildir with tmp/, new/, cur/ (mode 0700). 100 usage, 111 failure."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("maildirmake: usage: maildirmake name", file=sys.stderr)
        return 100
    old = os.umask(0o077)
    try:
        os.mkdir(args[0], 0o700)
        for sub in ("tmp", "new", "cur"):
            os.mkdir(os.path.join(args[0], sub), 0o700)
    except OSError as exc:
        print(
            f"maildirmake: fatal: unable to mkdir {exc.filename}: {exc.strerror}", file=sys.stderr
        )
        return 111
    finally:
        os.umask(old)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
