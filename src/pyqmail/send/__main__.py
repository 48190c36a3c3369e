"""python -m pyqmail.send: run the scheduler."""

from __future__ import annotations

import argparse
import asyncio

from pyqmail.config import Home
from pyqmail.send.scheduler import serve
from pyqmail.unix.logfmt import set_component


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pyqmail-send")
    ap.add_argument("--home")
    args = ap.parse_args(argv)
    set_component("send")
    asyncio.run(serve(Home.from_env(args.home)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
