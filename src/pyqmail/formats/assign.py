"""users/assign: ``=local:user:uid:gid:home:dash:ext:`` and ``+prefix:...`` lines.

Lookup follows qmail-lspawn's users/cdb rules (qmail-files §4): an exact ``=``
line beats any ``+`` line, a longer ``+`` prefix beats a shorter one, and the
first of duplicate keys wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyqmail.formats.control import ControlError

MAX_ASSIGN_LINES = 1_000_000


@dataclass(frozen=True, slots=True)
class Assignment:
    user: str
    uid: int
    gid: int
    home: str
    dash: str
    ext: str


@dataclass(frozen=True, slots=True)
class UserMatch:
    """Result of resolving a local part: who gets it and which .qmail suffix."""

    user: str
    uid: int
    gid: int
    home: str
    dash: str
    ext: str


@dataclass(slots=True)
class Assign:
    exact: dict[str, Assignment]
    prefix: dict[str, Assignment]

    def lookup(self, local: str) -> UserMatch | None:
        key = local.lower()
        hit = self.exact.get(key)
        if hit is not None:
            return UserMatch(hit.user, hit.uid, hit.gid, hit.home, hit.dash, hit.ext)
        for cut in range(len(local), -1, -1):
            pre = self.prefix.get(key[:cut])
            if pre is not None:
                return UserMatch(
                    pre.user, pre.uid, pre.gid, pre.home, pre.dash, pre.ext + local[cut:]
                )
        return None


def parse_assign(text: str, *, path: str = "users/assign") -> Assign:
    """Parse the whole file; it must end with a line holding a single ``.``."""
    exact: dict[str, Assignment] = {}
    prefix: dict[str, Assignment] = {}
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the file's final newline ends the last line; it starts none
    if len(lines) > MAX_ASSIGN_LINES:
        raise ControlError(path, MAX_ASSIGN_LINES, "too many lines")
    ended = False
    for number, line in enumerate(lines, 1):
        if ended:
            if line.strip():
                raise ControlError(path, number, "text after the final '.' line")
            continue
        if line == ".":
            ended = True
            continue
        if "\0" in line:
            raise ControlError(path, number, "NUL byte in line")
        kind = line[:1]
        if kind not in ("=", "+"):
            raise ControlError(path, number, "line must start with '=' or '+'")
        fields = line[1:].split(":")
        if len(fields) < 7:
            raise ControlError(path, number, "needs at least 6 colons after the key")
        key, user, uid, gid, home, dash, ext = fields[:7]
        if not (uid.isascii() and uid.isdigit() and gid.isascii() and gid.isdigit()):
            raise ControlError(path, number, "uid and gid must be numbers")
        entry = Assignment(user, int(uid), int(gid), home, dash, ext)
        table = exact if kind == "=" else prefix
        table.setdefault(key.lower(), entry)
    if not ended:
        raise ControlError(path, len(lines) + 1, "missing the final '.' line")
    return Assign(exact, prefix)


def format_assign_line(
    kind: str, key: str, user: str, uid: int, gid: int, home: str, dash: str, ext: str
) -> str:
    return f"{kind}{key}:{user}:{uid}:{gid}:{home}:{dash}:{ext}:"
