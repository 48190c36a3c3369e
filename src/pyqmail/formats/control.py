"""qmail's three control-file readers: line, list and integer (qmail-files §2).

Pure: callers hand in the file's text (or None when the file does not exist).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    import ipaddress

_ASCII_DIGITS = "0123456789"  # str.isdigit() also accepts "²", which int() refuses


class ControlError(ValueError):
    """A control file that exists but cannot be used; names file and line.

    A plain exception, not a frozen dataclass: Python itself assigns
    ``__traceback__`` on exceptions (contextlib's ``__exit__`` does), which a
    frozen slotted dataclass turns into a TypeError.
    """

    def __init__(self, path: str, line: int, why: str) -> None:
        super().__init__(path, line, why)
        self.path = path
        self.line = line
        self.why = why

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.why}"


def parse_line(text: str | None, default: str | None) -> str | None:
    """First line, trailing spaces/tabs/newline removed; missing file -> default."""
    if text is None:
        return default
    first = text.split("\n", 1)[0]
    return first.rstrip(" \t\r")


def parse_list(text: str | None) -> list[str]:
    """Every line right-stripped; blank and ``#`` lines dropped."""
    if text is None:
        return []
    out = []
    for raw in text.split("\n"):
        line = raw.rstrip(" \t\r")
        if line and not line.startswith("#"):
            out.append(line)
    return out


def parse_int(text: str | None, default: int) -> int:
    """qmail's integer reader: garbage or a missing file keep the default."""
    if text is None:
        return default
    # qmail's scan_ulong: ASCII digits from the very first byte; a leading
    # blank or anything else keeps the default (qmail-files §2).
    first = text.split("\n", 1)[0]
    digits = ""
    for ch in first:
        if ch not in _ASCII_DIGITS:
            break
        digits += ch
    return int(digits) if digits else default


def check_int(text: str, *, path: str, lo: int, hi: int) -> int:
    """Strict form for ``pyqmail check``: the first line must be a number in range."""
    first = text.split("\n", 1)[0].strip()
    if not first or first.strip(_ASCII_DIGITS):
        raise ControlError(path, 1, f"{first!r} is not a decimal number")
    value = int(first)
    if not lo <= value <= hi:
        raise ControlError(path, 1, f"{value} is outside {lo}..{hi}")
    return value


def parse_colon_map(text: str | None) -> dict[str, str]:
    """smtproutes / virtualdomains: ``key:value``; keys lowercased, last duplicate wins."""
    out: dict[str, str] = {}
    for line in parse_list(text):
        key, sep, value = line.partition(":")
        if sep:
            out[key.lower()] = value
    return out


def domain_keys(domain: str) -> list[str]:
    """``a.b.c`` -> ``a.b.c``, ``.b.c``, ``.c``: qmail's suffix lookup order."""
    keys = [domain]
    pos = domain.find(".")
    while pos >= 0:
        keys.append(domain[pos:])
        pos = domain.find(".", pos + 1)
    return keys


IPNetwork: TypeAlias = "ipaddress.IPv4Network | ipaddress.IPv6Network"


def parse_networks(text: str | None, *, path: str) -> tuple[IPNetwork, ...]:
    """One IP address or ``address/prefix`` a line (moreipme, notipme, outgoingip)."""
    out: list[IPNetwork] = []
    if text is None:
        return ()
    # here: ipaddress is ~0.5 MB in components that never read these files
    import ipaddress

    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip(" \t\r")
        if not line or line.startswith("#"):
            continue
        try:
            out.append(ipaddress.ip_network(line.strip("[]"), strict=False))
        except ValueError:
            raise ControlError(path, lineno, f"{line!r} is not an IP address") from None
    return tuple(out)
