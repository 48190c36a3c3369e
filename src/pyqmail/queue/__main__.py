"""python -m pyqmail.queue: run the queue writer."""

from __future__ import annotations

import argparse

from pyqmail.config import Home
from pyqmail.queue.writer import serve
from pyqmail.unix import loop
from pyqmail.unix.logfmt import set_component


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pyqmail-queue")
    ap.add_argument("--home")
    ap.add_argument("--fd", type=int)
    args = ap.parse_args(argv)
    set_component("queue")
    loop.run(serve(Home.from_env(args.home), args.fd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
