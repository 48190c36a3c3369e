"""python -m pyqmail.smtpd --fd N [--submission-fd M]: serve SMTP on inherited sockets."""

from __future__ import annotations

import argparse

from pyqmail.config import Home
from pyqmail.smtpd.server import serve
from pyqmail.unix import loop
from pyqmail.unix.logfmt import set_component


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pyqmail-smtpd")
    ap.add_argument("--home")
    ap.add_argument("--fd", type=int, action="append", default=[])
    ap.add_argument("--submission-fd", type=int, action="append", default=[])
    ap.add_argument("--rules", help="tcprules file instead of control/tcprules.smtp")
    ap.add_argument("--no-rcptcheck", action="store_true", help="mini node: users live elsewhere")
    args = ap.parse_args(argv)
    set_component("smtpd")
    home = Home.from_env(args.home)
    rcptcheck = not args.no_rcptcheck
    loop.run(serve(home, args.fd, args.submission_fd, args.rules, rcptcheck=rcptcheck))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
