"""The command line every component shares: ``python -m pyqmail.X --home H``."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from pyqmail.config import Home, apply_syncmode
from pyqmail.unix import compargs, loop
from pyqmail.unix.logfmt import set_component


def component_main(
    name: str,
    serve: Callable[[Home], Coroutine[Any, Any, None] | None],
    argv: list[str] | None = None,
) -> int:
    args = compargs.parse(f"pyqmail-{name}", ("--home",), argv)
    set_component(name)
    home = Home.from_env(args.home)
    apply_syncmode(home)
    result = serve(home)
    if result is not None:
        loop.run(result)
    return 0
