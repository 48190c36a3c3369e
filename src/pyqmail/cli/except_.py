"""except program [arg...]: invert a program's verdict for qmail-local.

Program exit 0 -> 100 (bounce); 111 -> 111; anything else -> 0.
"""

from __future__ import annotations

import sys

from pyqmail.cli.helpers import EXIT_PERM, EXIT_TEMP, Fatal, fail, run_child


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if not args:
            raise Fatal(EXIT_PERM, "usage: except program [ arg ... ]")
        code = run_child(args)
        if code == EXIT_TEMP:
            raise Fatal(EXIT_TEMP, "temporary child error")
    except Fatal as exc:
        return fail("except", exc)
    return EXIT_PERM if code == 0 else 0


if __name__ == "__main__":
    raise SystemExit(main())
