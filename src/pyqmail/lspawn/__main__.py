"""python -m pyqmail.lspawn"""

from __future__ import annotations

import argparse

from pyqmail.config import Home
from pyqmail.lspawn.main import serve
from pyqmail.unix.logfmt import set_component


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pyqmail-lspawn")
    ap.add_argument("--home")
    args = ap.parse_args(argv)
    set_component("lspawn")
    serve(Home.from_env(args.home))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
