"""One line per event, in qmail-send's vocabulary, on stderr.

The supervisor collects every component's stderr; each line carries a
timestamp and the component's name so one stream serves the whole MTA.

Inside an event loop the lines of one loop turn go out in one write at the
end of that turn: send logs five lines a message, and a write (and a wake-up
of the log component) per line cost more CPU than the rest of its
bookkeeping. Outside a loop, or from another thread, each line is written
at once. A line logged in the turn a process is SIGKILLed may be lost; mail
is not, as no line stands for a state the queue files do not hold.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from _thread import get_ident
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop

_component = "pyqmail"
_pending: list[str] = []
_flush_scheduled = False
_flush_thread = 0  # the thread whose loop will flush _pending


def set_component(name: str) -> None:
    global _component
    _component = name


_MANGLE = str.maketrans({**{chr(c): "_" for c in range(32)}, "\n": "/", "%": "_", "\x7f": "_"})


def clean(text: str) -> str:
    """qmail-send's log mangling: newlines -> '/', control bytes and '%' -> '_'."""
    return text.rstrip("\n").translate(_MANGLE)


def log(line: str) -> None:
    global _flush_scheduled, _flush_thread
    text = f"@{time.time():.6f} {_component}: {line}\n"
    if _flush_scheduled and get_ident() == _flush_thread:
        # this turn's flush is already on the loop: no need to ask for the
        # loop again (asyncio.get_running_loop costs a getpid on 3.11)
        _pending.append(text)
        return
    loop = _running_loop()
    if loop is None:
        _write(text)
        return
    _pending.append(text)
    if not _flush_scheduled:
        _flush_scheduled = True
        _flush_thread = get_ident()
        loop.call_soon(flush)


def flush() -> None:
    """Write the lines held for this loop turn (also at exit)."""
    global _flush_scheduled
    _flush_scheduled = False
    if _pending:
        text = "".join(_pending)
        _pending.clear()
        _write(text)


def _forget_in_child() -> None:
    global _flush_scheduled
    _pending.clear()  # the parent writes them; a forked child must not again
    _flush_scheduled = False


atexit.register(flush)
os.register_at_fork(after_in_child=_forget_in_child)


def _running_loop() -> AbstractEventLoop | None:
    """The loop running in this thread; None in threads without one (they write at once)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None  # never loaded, so no loop can be running
    try:
        loop: AbstractEventLoop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    return loop


def _write(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # a closed log must never take mail down with it
