"""python -m pyqmail.smtpd --fd N [--submission-fd M]: serve SMTP on inherited sockets."""

from __future__ import annotations

from pyqmail.config import Home
from pyqmail.smtpd.server import serve
from pyqmail.unix import compargs, loop, notls
from pyqmail.unix.logfmt import set_component


def main(argv: list[str] | None = None) -> int:
    # --rules: a tcprules file instead of control/tcprules.smtp;
    # --no-rcptcheck: a mini node, whose users live on the queue servers
    args = compargs.parse("pyqmail-smtpd", compargs.VALUED + compargs.SWITCHES, argv)
    notls.ssl_later()  # started through unix/notls.py: STARTTLS loads OpenSSL when used
    set_component("smtpd")
    home = Home.from_env(args.home)
    rcptcheck = not args.no_rcptcheck
    loop.run(serve(home, args.fd, args.submission_fd, args.rules, rcptcheck=rcptcheck))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
