"""bouncesaying error [program [arg...]]: bounce with that text, maybe conditionally.

Without a program, or when it exits 0: print the text, exit 100 (qmail-local
bounces with it). Program exit 111 -> 111; anything else -> 0.
"""

from __future__ import annotations

import sys

from pyqmail.cli.helpers import EXIT_PERM, EXIT_TEMP, Fatal, fail, run_child


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if not args:
            raise Fatal(EXIT_PERM, "usage: bouncesaying error [ program [ arg ... ] ]")
        if len(args) > 1:
            code = run_child(args[1:])
            if code == EXIT_TEMP:
                raise Fatal(EXIT_TEMP, "temporary child error")
            if code != 0:
                return 0
    except Fatal as exc:
        return fail("bouncesaying", exc)
    print(args[0], file=sys.stderr)
    return EXIT_PERM


if __name__ == "__main__":
    raise SystemExit(main())
