"""The command line the supervisor gives a component: ``--home H --fd N ...``.

Not argparse: it costs each of the seven long-running components about
1.4 MB of resident memory (argparse and gettext), for a command line that
only pyqmail start writes. Unknown or malformed options still stop the
component with argparse's exit code 2 and a message naming the option.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

USAGE_EXIT = 2  # argparse's, which scripts calling components may expect
VALUED = ("--home", "--fd", "--submission-fd", "--rules")
SWITCHES = ("--no-rcptcheck",)


@dataclass(slots=True)
class ComponentArgs:
    home: str | None = None
    fd: list[int] = field(default_factory=list)
    submission_fd: list[int] = field(default_factory=list)
    rules: str | None = None
    no_rcptcheck: bool = False


def _fail(prog: str, text: str) -> SystemExit:
    print(f"{prog}: error: {text}", file=sys.stderr)
    return SystemExit(USAGE_EXIT)


def parse(prog: str, allowed: Sequence[str], argv: Sequence[str] | None = None) -> ComponentArgs:
    """The options in allowed (each at most the ones in VALUED and SWITCHES)."""
    args = ComponentArgs()
    items = list(sys.argv[1:] if argv is None else argv)
    i = 0
    while i < len(items):
        opt, eq, value = items[i].partition("=")
        i += 1
        if opt not in allowed:
            raise _fail(prog, f"unrecognized argument: {items[i - 1]}")
        if opt in SWITCHES:
            if eq:
                raise _fail(prog, f"{opt} takes no value")
            args.no_rcptcheck = True
            continue
        if not eq:
            if i >= len(items):
                raise _fail(prog, f"{opt} expects a value")
            value = items[i]
            i += 1
        if opt in ("--fd", "--submission-fd"):
            if not value.isdigit() or len(value) > 9:
                raise _fail(prog, f"{opt}: not a file descriptor: {value!r}")
            (args.fd if opt == "--fd" else args.submission_fd).append(int(value))
        elif opt == "--home":
            args.home = value
        else:
            args.rules = value
    return args
