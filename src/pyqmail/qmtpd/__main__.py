"""python -m pyqmail.qmtpd --proto qmtp|qmqp --fd N [--fd M]: serve inherited sockets."""

from __future__ import annotations

import argparse
import asyncio

from pyqmail.config import Home
from pyqmail.qmtpd.server import PROTOCOLS, serve
from pyqmail.unix.logfmt import set_component


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pyqmail-qmtpd")
    ap.add_argument("--home")
    ap.add_argument("--proto", choices=sorted(PROTOCOLS), default="qmtp")
    ap.add_argument("--fd", type=int, action="append", default=[])
    args = ap.parse_args(argv)
    set_component(f"{args.proto}d")
    asyncio.run(serve(Home.from_env(args.home), args.proto, args.fd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
