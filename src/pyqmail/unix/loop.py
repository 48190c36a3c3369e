"""Run a daemon's event loop: uvloop when it is installed, asyncio's own otherwise.

uvloop (the optional ``fast`` extra) halves the event loop's own CPU per
connection; nothing in pyqmail depends on it being there.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    import asyncio  # here: components without an event loop never pay for it
    import sys

    if "uvloop" not in sys.modules and sys.modules.get("ssl", sys) is None:
        # started through unix/notls.py without --uvloop: asyncio's own loop
        return asyncio.run(main)
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result
