"""qmail-pw2u [-/ohHuUC] [-c X]: a passwd file on stdin to users/assign on stdout.

Runs as: anyone. Reads stdin and, when present, QMAILHOME/users/{include,
exclude,mailnames,subusers,append}; stats each user's home.
Exit:    0; 100 usage; 111 bad input, missing alias account or I/O trouble.
"""

from __future__ import annotations

import getopt
import os
import sys

from pyqmail.config import Home
from pyqmail.formats.control import ControlError
from pyqmail.formats.pw2u import Extras, HomeCheck, HomeState, Options, PwEntry, convert

MAX_INPUT = 1 << 28
USAGE = "qmail-pw2u: usage: qmail-pw2u [-/ohHuUC] [-c X] < passwd"


def home_state(pw: PwEntry) -> HomeState:
    try:
        st = os.stat(pw.home)
    except FileNotFoundError:
        return HomeState.MISSING
    return HomeState.OK if st.st_uid == pw.uid else HomeState.NOT_OWNED


def _read_lines(path: str) -> list[str] | None:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return [ln.strip() for ln in fh.read(MAX_INPUT).split("\n") if ln.strip()]
    except FileNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        flags, rest = getopt.getopt(args, "/ohHuUCc:")
    except getopt.GetoptError:
        print(USAGE, file=sys.stderr)
        return 100
    if rest:
        print(USAGE, file=sys.stderr)
        return 100
    check, upper, dash, ext, slash = HomeCheck.SKIP_MISSING, False, "-", True, False
    for flag, value in flags:
        if flag in ("-o", "-h", "-H"):
            check = HomeCheck(flag[1])
        elif flag in ("-u", "-U"):
            upper = flag == "-u"
        elif flag == "-c":
            dash, ext = value[:1] or "-", True
        elif flag == "-C":
            ext = False
        elif flag == "-/":
            slash = True
    users = os.path.dirname(Home.from_env().assign)

    def lines(name: str) -> list[str] | None:
        return _read_lines(os.path.join(users, name))

    include = lines("include")
    try:
        with open(os.path.join(users, "append"), encoding="utf-8") as fh:
            append = fh.read(MAX_INPUT)
    except FileNotFoundError:
        append = ""
    extras = Extras(
        include=None if include is None else frozenset(include),
        exclude=frozenset(lines("exclude") or []),
        mailnames=tuple(lines("mailnames") or []),
        subusers=tuple(lines("subusers") or []),
        append=append,
    )
    try:
        text = sys.stdin.buffer.read(MAX_INPUT).decode("utf-8", "surrogateescape")
        out = convert(
            text, home_state, Options(check, upper, dash, ext, slash), extras, path="stdin"
        )
        sys.stdout.buffer.write(out.encode("utf-8", "surrogateescape"))
        sys.stdout.flush()
    except ControlError as exc:
        print(f"qmail-pw2u: fatal: {exc}", file=sys.stderr)
        return 111
    except OSError as exc:
        print(f"qmail-pw2u: fatal: {exc}", file=sys.stderr)
        return 111
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
