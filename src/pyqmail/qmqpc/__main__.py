"""python -m pyqmail.qmqpc --fd N: a mini node's queue socket, forwarding over QMQP."""

from __future__ import annotations

import argparse
import asyncio

from pyqmail.config import Home
from pyqmail.qmqpc.forwarder import serve
from pyqmail.unix.logfmt import set_component


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pyqmail-qmqpc")
    ap.add_argument("--home")
    ap.add_argument("--fd", type=int, required=True)
    args = ap.parse_args(argv)
    set_component("qmqpc")
    asyncio.run(serve(Home.from_env(args.home), args.fd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
