"""qmail-pw2u's conversion: a passwd file to users/assign lines. Pure.

qmail-programs §4: skip uid 0, names with upper case (unless allowed), users
outside ``include`` or inside ``exclude``, and users whose home is missing
or not theirs (as the home policy says); each user yields ``=name`` and
``+name<break>`` lines for each of its mail names; ``subusers`` adds
sub-addresses; the alias account adds the catch-all ``+:alias...``; the
``append`` text is copied before the final ``.``.

The break character (``-c X``) only ends the ``+name<break>`` keys; the dash
field, which qmail-local puts between ``.qmail`` and the extension, is
always ``-`` (``-/`` with the ``-/`` option: extension files then live in
the directory ``~/.qmail-/``), as qmail-pw2u's dashcolon.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from pyqmail.formats.assign import format_assign_line
from pyqmail.formats.control import ControlError

MAX_PASSWD_LINES = 1_000_000


class HomeCheck(Enum):
    SKIP_MISSING = "o"  # -o (default): skip a user whose home is missing
    ABORT_MISSING = "h"  # -h: a missing home is fatal
    NONE = "H"  # -H: don't look at homes


class HomeState(Enum):
    OK = 0
    MISSING = 1
    NOT_OWNED = 2


@dataclass(frozen=True, slots=True)
class Options:
    home_check: HomeCheck = HomeCheck.SKIP_MISSING
    allow_upper: bool = False  # -u
    dash: str = "-"  # -c X: the break character in +name<break> keys
    extensions: bool = True  # -C turns them off
    slash: bool = False  # -/: the dash field is "-/" (.qmail-/ext)

    @property
    def dash_field(self) -> str:
        return "-/" if self.slash else "-"


@dataclass(frozen=True, slots=True)
class Extras:
    """The optional files in users/: each list holds their non-empty lines."""

    include: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()
    mailnames: tuple[str, ...] = ()
    subusers: tuple[str, ...] = ()
    append: str = ""


@dataclass(frozen=True, slots=True)
class PwEntry:
    name: str
    uid: int
    gid: int
    home: str


def parse_passwd_line(line: str, *, path: str, number: int) -> PwEntry:
    fields = line.split(":")
    if len(fields) < 7:
        raise ControlError(path, number, "a passwd line needs 7 fields")
    name, _pw, uid, gid, _gecos, home = fields[:6]
    if not (uid.isascii() and uid.isdigit() and gid.isascii() and gid.isdigit()):
        raise ControlError(path, number, "uid and gid must be numbers")
    if not name or "\0" in line:
        raise ControlError(path, number, "empty name or NUL byte")
    return PwEntry(name, int(uid), int(gid), home)


def convert(
    passwd: str,
    home_state: Callable[[PwEntry], HomeState],
    opts: Options = Options(),
    extras: Extras = Extras(),
    *,
    path: str = "passwd",
) -> str:
    """The users/assign text (ending in ``.``); ControlError names a bad line."""
    lines = passwd.split("\n")
    if len(lines) > MAX_PASSWD_LINES:
        raise ControlError(path, MAX_PASSWD_LINES, "too many lines")
    names: dict[str, list[str]] = {}
    for number, line in enumerate(extras.mailnames, 1):
        owner, *aliases = line.split(":")
        if not owner or not aliases:
            raise ControlError("users/mailnames", number, "needs user:name[:name...]")
        names.setdefault(owner, []).extend(m for m in aliases if m)
    out: list[str] = []
    dash = opts.dash_field
    accounts: dict[str, PwEntry] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        pw = parse_passwd_line(line, path=path, number=number)
        accounts.setdefault(pw.name, pw)
        if pw.uid == 0 or pw.name in extras.exclude:
            continue
        if extras.include is not None and pw.name not in extras.include:
            continue
        if not opts.allow_upper and pw.name != pw.name.lower():
            continue
        if opts.home_check is not HomeCheck.NONE:
            state = home_state(pw)
            if state is HomeState.MISSING and opts.home_check is HomeCheck.ABORT_MISSING:
                raise ControlError(path, number, f"home directory {pw.home} is missing")
            if state is not HomeState.OK:
                continue
        for mail in names.get(pw.name, [pw.name]):
            out.append(format_assign_line("=", mail, pw.name, pw.uid, pw.gid, pw.home, "", ""))
            if opts.extensions:
                out.append(
                    format_assign_line(
                        "+", mail + opts.dash, pw.name, pw.uid, pw.gid, pw.home, dash, ""
                    )
                )
    for number, line in enumerate(extras.subusers, 1):
        fields = line.split(":")
        if len(fields) < 3:
            raise ControlError("users/subusers", number, "needs sub:user:pre:")
        sub, user, pre = fields[:3]
        pw_user = accounts.get(user)
        if pw_user is None:
            raise ControlError("users/subusers", number, f"no such user {user}")
        u = pw_user
        out.append(format_assign_line("=", sub, u.name, u.uid, u.gid, u.home, dash, pre))
        if opts.extensions:
            out.append(
                format_assign_line(
                    "+", sub + opts.dash, u.name, u.uid, u.gid, u.home, dash, pre + "-"
                )
            )
    alias = accounts.get("alias")
    if alias is None:
        raise ControlError(path, 0, "no alias account: qmail needs one")
    out.append(format_assign_line("+", "", "alias", alias.uid, alias.gid, alias.home, dash, ""))
    text = "".join(line + "\n" for line in out)
    if extras.append:
        text += extras.append if extras.append.endswith("\n") else extras.append + "\n"
    return text + ".\n"
