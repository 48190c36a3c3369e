"""pyqmail: the front command (init, start, adduser, check, queue)."""

from __future__ import annotations

import argparse
import os
import sys

from pyqmail.config import (
    Home,
    RemoteConfig,
    SendConfig,
    SmtpdConfig,
    apply_syncmode,
    read_control,
)
from pyqmail.formats.control import ControlError
from pyqmail.layout import queue_ok

UNIMPLEMENTED_LISTENERS: tuple[str, ...] = ()


def cmd_init(args: argparse.Namespace) -> int:
    from pyqmail.cli.homeinit import init_home

    home = Home.from_env(args.home)
    me = args.me or "localhost"
    if args.system:
        from pyqmail.cli.sysinit import init_system

        if os.geteuid() != 0:
            print("pyqmail init: --system needs root", file=sys.stderr)
            return 100
        lines = init_system(home, me)
    else:
        lines = [f"wrote {path}" for path in init_home(home, me)]
    for line in lines:
        print(line)
    print(f"home ready at {home.root}")
    return 0


def cmd_adduser(args: argparse.Namespace) -> int:
    from pyqmail.cli.homeinit import add_user

    home = Home.from_env(args.home)
    try:
        uhome = add_user(home, args.name)
    except (ValueError, ControlError, OSError) as exc:
        print(f"pyqmail adduser: {exc}", file=sys.stderr)
        return 100
    print(f"added {args.name} with Maildir {os.path.join(uhome, 'Maildir')}")
    return 0


def check_home(home: Home) -> list[str]:
    """Every problem pyqmail can see in a home, each naming file and line."""
    problems: list[str] = []
    # here, not at the top: `pyqmail start` stays the supervisor for the
    # MTA's whole life and need not carry the control-file table
    from pyqmail.controlfiles import check_controls
    from pyqmail.formats.assign import parse_assign

    missing = queue_ok(home)
    if missing:
        problems.append(missing)
    if read_control(home, "me") is None:
        problems.append(f"{home.control('me')}:0: missing (every program needs it)")
    problems += check_controls(home)[0]
    problems += check_servercert(home)
    try:
        with open(home.assign, encoding="utf-8", errors="surrogateescape") as fh:
            parse_assign(fh.read(), path=home.assign)
    except FileNotFoundError:
        pass
    except ControlError as exc:
        problems.append(str(exc))
    from pyqmail.auth import pwfile

    try:
        pwfile.load(home.root)
    except (ControlError, OSError) as exc:
        problems.append(str(exc))
    for loader in (SendConfig.load, SmtpdConfig.load, RemoteConfig.load, apply_syncmode):
        try:
            loader(home)
        except (ControlError, OSError, ValueError) as exc:
            problems.append(str(exc))
    return problems


def check_servercert(home: Home) -> list[str]:
    """STARTTLS's certificate and key, loaded as smtpd will load them."""
    import ssl

    from pyqmail.net.tls import server_context

    cert, key = home.control("servercert.pem"), home.control("serverkey.pem")
    problems = [
        f"{path}:0: holds a private key but others may read it (chmod o-r)"
        for path in (cert, key, home.control("clientcert.pem"))
        if os.path.exists(path) and os.stat(path).st_mode & 0o004
    ]
    if not os.path.exists(cert):
        return problems
    try:
        server_context(cert, key if os.path.exists(key) else None)
    except (OSError, ssl.SSLError) as exc:
        problems.append(f"{cert}:0: unusable for STARTTLS: {exc}")
    return problems


def cmd_check(args: argparse.Namespace) -> int:
    home = Home.from_env(args.home)
    problems = check_home(home)
    for p in problems:
        print(p)
    from pyqmail.cli.localcheck import check_local
    from pyqmail.controlfiles import check_controls

    for warning in check_controls(home)[1] + check_local(home):
        print(warning)
    if not problems:
        print(f"{home.root}: ok")
    return 1 if problems else 0


def cmd_start(args: argparse.Namespace) -> int:
    from pyqmail.start.supervisor import Supervisor, parse_listen

    home = Home.from_env(args.home)
    smtp = [] if args.smtp == "off" else [parse_listen(v, 25) for v in args.smtp.split(",")]
    for name in UNIMPLEMENTED_LISTENERS:
        if getattr(args, name) != "off":
            print(
                f"pyqmail start: the {name} listener is not available yet; "
                f"--{name} {getattr(args, name)} ignored",
                file=sys.stderr,
            )
    qmtp = [] if args.qmtp == "off" else [parse_listen(v, 209) for v in args.qmtp.split(",")]
    pop3 = [] if args.pop3 == "off" else [parse_listen(v, 110) for v in args.pop3.split(",")]
    qmqp = [] if args.qmqp == "off" else [parse_listen(v, 628) for v in args.qmqp.split(",")]
    submission = (
        []
        if args.submission == "off"
        else [parse_listen(v, 587) for v in args.submission.split(",")]
    )
    supervisor = Supervisor(
        home,
        [s for s in smtp if s is not None],
        qmtp=[s for s in qmtp if s is not None],
        qmqp=[s for s in qmqp if s is not None],
        mini=args.mini,
        submission=[s for s in submission if s is not None],
        pop3=[p for p in pop3 if p is not None],
    )
    if args.rules:
        supervisor.smtpd_args += ["--rules", os.path.abspath(args.rules)]
    return supervisor.run()


def cmd_passwd(args: argparse.Namespace) -> int:
    from pyqmail.cli.passwd import set_user_password

    return set_user_password(Home.from_env(args.home), args.name, sys.stdin.buffer)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pyqmail")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("init", help="create a home with working defaults")
    p.add_argument("--home")
    p.add_argument("--me", help="this host's name (default localhost)")
    p.add_argument(
        "--system", action="store_true", help="as root: qmail's users, groups, owners and modes"
    )
    p.set_defaults(func=cmd_init)
    p = sub.add_parser("adduser", help="add a virtual user with a Maildir")
    p.add_argument("name")
    p.add_argument("--home")
    p.set_defaults(func=cmd_adduser)
    p = sub.add_parser("check", help="validate every control file")
    p.add_argument("--home")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("start", help="run the MTA in the foreground")
    p.add_argument("--home")
    p.add_argument("--smtp", default="127.0.0.1:2525")
    p.add_argument("--submission", default="127.0.0.1:2587")
    p.add_argument("--rules", help="tcprules file for SMTP and submission (control/tcprules.smtp)")
    p.add_argument("--qmtp", default="127.0.0.1:2209")
    p.add_argument("--qmqp", default="127.0.0.1:2628")
    p.add_argument("--pop3", default="127.0.0.1:2110")
    p.add_argument(
        "--mini", action="store_true", help="no queue: hand every message to control/qmqpservers"
    )
    p.set_defaults(func=cmd_start)
    p = sub.add_parser("passwd", help="set a virtual user's password (one line on stdin)")
    p.add_argument("name")
    p.add_argument("--home")
    p.set_defaults(func=cmd_passwd)
    from pyqmail.cli.queue import add_parser as add_queue_parser

    add_queue_parser(sub)
    args = ap.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
