"""The .qmail language: which file applies, and what each line means (qmail-files §5)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Comment:
    pass


@dataclass(frozen=True, slots=True)
class Program:
    command: str


@dataclass(frozen=True, slots=True)
class Forward:
    address: str


@dataclass(frozen=True, slots=True)
class Maildir:
    path: str


@dataclass(frozen=True, slots=True)
class Mbox:
    path: str


Instruction = Comment | Program | Forward | Maildir | Mbox

_SAFEEXT = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ.", "abcdefghijklmnopqrstuvwxyz:")


def safe_ext(ext: str) -> str:
    """qmail-local's safeext: ASCII lowercase, ``.`` -> ``:`` (same length as ext)."""
    return ext.translate(_SAFEEXT)


def parse_line(raw: str) -> Instruction:
    """One .qmail line (trailing blanks already ignored here)."""
    line = raw.rstrip(" \t")
    if not line or line.startswith("#") or line.startswith("+"):
        return Comment()
    first = line[0]
    if first == "|":
        return Program(line[1:])
    if first in "./":
        return Maildir(line) if line.endswith("/") else Mbox(line)
    if first == "&":
        return Forward(line[1:])
    return Forward(line)


def candidate_files(dash: str, ext: str) -> list[tuple[str, str | None]]:
    """(.qmail file name, DEFAULT value) in qmail-local's search order.

    safeext lowercases and maps ``.`` to ``:``; every prefix of safeext that is
    empty or ends in ``-`` is tried with ``default``, longest first.
    """
    # qmail's case_lowerb is ASCII-only, so safe keeps ext's length and the
    # DEFAULT slices below line up with the original-case ext.
    safe = ext.translate(_SAFEEXT)
    # qmail-local sets DEFAULT even for the exact file when the literal ext
    # ends in "default" (qmail-files §5.1).
    exact_default = ext[len(safe) - 7 :] if safe.endswith("default") else None
    out: list[tuple[str, str | None]] = [(f".qmail{dash}{safe}", exact_default)]
    # The rule holds for dash "" too: .qmail, then the odd .qmaildefault.
    for cut in range(len(safe), -1, -1):
        if cut == 0 or safe[cut - 1] == "-":
            name = f".qmail{dash}{safe[:cut]}default"
            if name != out[0][0]:
                out.append((name, ext[cut:]))
    return out
