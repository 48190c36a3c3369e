"""python -m pyqmail.clean"""

from __future__ import annotations

import argparse
import asyncio

from pyqmail.clean.main import serve
from pyqmail.config import Home
from pyqmail.unix.logfmt import set_component


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pyqmail-clean")
    ap.add_argument("--home")
    args = ap.parse_args(argv)
    set_component("clean")
    asyncio.run(serve(Home.from_env(args.home)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
