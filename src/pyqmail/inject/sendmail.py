"""sendmail: the sendmail command line, as qmail's wrapper reads it.

Runs as: the caller.
Does:    -bs runs qmail-smtpd on stdin/stdout; -bp (or the name mailq) lists
         the queue (qmail-qread); everything else becomes
         ``qmail-inject -a|-H [-f sender] -- args``. -t means "recipients
         from the header too" (-H). Options qmail ignores are accepted and
         ignored: -B x, -p x, -v, -i, -x, -m, -e x, -o x (so -oi, -odb, -oem),
         -E..., -J..., -bm. Anything else: usage, exit 100.
Exit:    qmail-inject's, qmail-qread's or qmail-smtpd's; 111 when QMAILHOME is
         not a directory or a program cannot be run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from typing import BinaryIO

from pyqmail.config import Home
from pyqmail.formats.address import split_at_last_at
from pyqmail.inject import main as inject
from pyqmail.inject.sgetopt import GetOpt

USAGE = "sendmail: usage: sendmail [ -t ] [ -fsender ] [ -Fname ] [ -bp ] [ -bs ] [ arg ... ]"
OPTS = "vimte:f:p:o:B:F:EJxb:"


def _die(text: str, code: int) -> int:
    print(f"sendmail: {text}", file=sys.stderr)
    return code


def smtpd(env: MutableMapping[bytes, bytes]) -> int:
    """-bs: become qmail-smtpd on this stdin/stdout, as a local trusted client."""
    if b"PROTO" not in env:
        env.update(
            {
                b"RELAYCLIENT": b"",
                b"DATABYTES": b"0",
                b"PROTO": b"TCP",
                b"TCPLOCALIP": b"127.0.0.1",
                b"TCPLOCALHOST": b"localhost",
                b"TCPREMOTEIP": b"127.0.0.1",
                b"TCPREMOTEHOST": b"localhost",
                b"TCPREMOTEINFO": b"sendmail-bs",
            }
        )
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        # qmail execs bin/qmail-smtpd; the SMTP program stays its own process
        os.execve(sys.executable, [sys.executable, "-m", "pyqmail.smtpd.stdio"], env)  # noqa: S606
    except OSError:
        pass
    return _die("fatal: unable to run qmail-smtpd", 111)


def mailq(home: Home) -> int:
    from pyqmail.cli import qread

    os.environ["QMAILHOME"] = home.root
    return qread.main()


def _sender_env(env: MutableMapping[bytes, bytes], sender: bytes) -> None:
    """netqmail's -f: the From line follows the envelope sender."""
    for name in (b"QMAILNAME", b"MAILNAME", b"NAME", b"QMAILHOST", b"MAILHOST"):
        env.pop(name, None)
    user, host = split_at_last_at(sender)
    env[b"QMAILUSER"] = user
    if host is not None:
        env[b"QMAILHOST"] = host


def run(
    argv: list[str],
    env: MutableMapping[bytes, bytes],
    stdin: BinaryIO,
    stdout: BinaryIO,
    home: Home,
) -> int:
    """sendmail with explicit inputs; env is changed as qmail's wrapper changes it."""
    if not os.path.isdir(home.root):
        return _die("fatal: unable to switch to qmail home directory", 111)
    header_recipients = False
    sender: str | None = None
    opts = GetOpt(argv, OPTS)
    while (opt := opts.next()) is not None:
        if opt == "t":
            header_recipients = True
        elif opt == "f":
            sender = opts.arg
        elif opt == "F" and opts.arg is not None:
            env[b"MAILNAME"] = os.fsencode(opts.arg)
        elif opt in ("E", "J"):
            opts.skip_rest()  # Sony NEWS-OS: an optional argument glued on
        elif opt == "b" and opts.arg is not None:
            mode = opts.arg[:1]
            if mode == "p":
                return mailq(home)
            if mode == "s":
                return smtpd(env)
            if mode != "m":
                print(USAGE, file=sys.stderr)
                return 100
        elif opt in ("B", "p", "v", "i", "x", "m", "e", "o"):
            pass  # qmail has one delivery mode, one error mode, and no '.' problem
        else:
            print(USAGE, file=sys.stderr)
            return 100
    args = opts.rest
    prog = os.path.basename(argv[0]) if argv else "sendmail"
    if prog == "mailq":
        return mailq(home)
    if prog == "newaliases":
        return _die("fatal: please use fastforward/newaliases instead", 100)
    inject_argv = ["qmail-inject", "-H" if header_recipients else "-a"]
    if sender is not None:
        inject_argv += ["-f", sender]
        # qmail-inject reads -F's MAILNAME, but -f clears it again (netqmail)
        _sender_env(env, os.fsencode(sender))
    inject_argv += ["--", *args]
    return inject.run(inject_argv, env, stdin, stdout, home)


def main() -> int:
    env = dict(os.environb)
    return run(sys.argv, env, sys.stdin.buffer, sys.stdout.buffer, Home.from_env())


def mailq_main() -> int:
    """mailq: the queue, as qmail-qread prints it."""
    return mailq(Home.from_env())


if __name__ == "__main__":
    raise SystemExit(main())
