"""tcprules text format: ``address:allow|deny[,VAR="value"]...`` (qmail-files §7).

First matching rule wins, searched in tcpserver's order: the exact IP,
shorter IPv4 prefixes ending in a dot, then the empty address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyqmail.formats.control import ControlError

MAX_RULES = 100_000
_ACTION = re.compile(r":(?:allow|deny)(?=,|$)")


@dataclass(frozen=True, slots=True)
class Rule:
    allow: bool
    env: tuple[tuple[str, str], ...]


def _parse_instructions(text: str, path: str, number: int) -> Rule:
    action, _, rest = text.partition(",")
    if action not in ("allow", "deny"):
        raise ControlError(path, number, f"unknown instruction {action!r}")
    env: list[tuple[str, str]] = []
    while rest:
        name, eq, tail = rest.partition("=")
        if not eq or not name or not tail:
            raise ControlError(path, number, 'expected VAR="value"')
        quote = tail[0]
        end = tail.find(quote, 1)
        if end < 0:
            raise ControlError(path, number, f"unterminated value for {name}")
        env.append((name, tail[1:end]))
        rest = tail[end + 1 :]
        if rest.startswith(","):
            rest = rest[1:]
        elif rest:
            raise ControlError(path, number, "expected ',' between variables")
    return Rule(action == "allow", tuple(env))


def parse_rules(text: str, *, path: str = "tcprules") -> dict[str, Rule]:
    rules: dict[str, Rule] = {}
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if len(rules) >= MAX_RULES:
            raise ControlError(path, number, "too many rules")
        # The first ":allow"/":deny" ends the address (an IPv6 address holds
        # colons but never those words); a value such as X=":deny" must not.
        found = _ACTION.search(line)
        if found is None:
            raise ControlError(path, number, "expected address:allow or address:deny")
        cut = found.start()
        address = line[:cut]
        rules.setdefault(address, _parse_instructions(line[cut + 1 :], path, number))
    return rules


def match(rules: dict[str, Rule], ip: str) -> Rule | None:
    """The rule for a client; None when no rule matches (tcpserver then allows)."""
    keys = [ip]
    if "." in ip and ":" not in ip:
        parts = ip.split(".")
        keys.extend(".".join(parts[:n]) + "." for n in range(len(parts) - 1, 0, -1))
    keys.append("")
    for key in keys:
        if key in rules:
            return rules[key]
    return None
