"""One line per event, in qmail-send's vocabulary, on stderr.

The supervisor collects every component's stderr; each line carries a
timestamp and the component's name so one stream serves the whole MTA.
"""

from __future__ import annotations

import sys
import time

_component = "pyqmail"


def set_component(name: str) -> None:
    global _component
    _component = name


def clean(text: str) -> str:
    """qmail-send's log mangling: newlines -> '/', control bytes and '%' -> '_'."""
    out = []
    for ch in text.rstrip("\n"):
        if ch == "\n":
            out.append("/")
        elif ch < " " or ch == "%" or ch == "\x7f":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def log(line: str) -> None:
    stamp = f"{time.time():.6f}"
    try:
        sys.stderr.write(f"@{stamp} {_component}: {line}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # a closed log must never take mail down with it
