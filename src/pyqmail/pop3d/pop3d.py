"""qmail-pop3d: POP3 TRANSACTION state over a Maildir, on stdin/stdout.

Usage:   qmail-pop3d MAILDIRNAME (relative to the cwd checkpassword left)
Runs as: the authenticated user (checkpassword changed uid and chdir'd home).
Reads:   fd 0; the Maildir; control/timeoutpop3d under QMAILHOME.
Writes:  fd 1; at QUIT only, unlinks deleted messages and moves new/ to cur/.
Trusts:  nothing from the network; message numbers are checked against the
         list fixed at login.
Exit:    0 after QUIT or when the client leaves, 111 when the Maildir cannot
         be read, 1 on usage errors.
Standards: RFC 1939, 2449.
"""

from __future__ import annotations

import ssl
import sys

from pyqmail.config import Home, Pop3Config
from pyqmail.pop3d.channel import Channel, Timeout
from pyqmail.pop3d.mailbox import Mailbox, MailboxError
from pyqmail.pop3d.session import transact
from pyqmail.proto.pop3 import server as eng
from pyqmail.unix.logfmt import log, set_component


def run(argv: list[str], home: Home) -> int:
    if len(argv) != 2 or not argv[1]:
        print("qmail-pop3d: usage: qmail-pop3d maildirname", file=sys.stderr)
        return 1
    chan = Channel(0, 1, Pop3Config.load(home).timeout)
    engine = eng.POP3Server(transaction=True)
    try:
        try:
            box = Mailbox.open(argv[1])
        except MailboxError as exc:
            log(f"pop3: {exc}")
            chan.write(b"-ERR this user has no usable Maildir\r\n")
            return 111
        chan.write(b"+OK \r\n")  # the answer to PASS, as qmail-pop3d gives it
        transact(chan, engine, box)
    except (Timeout, OSError, ssl.SSLError):
        pass
    return 0


def main() -> int:
    set_component("qmail-pop3d")
    return run(sys.argv, Home.from_env())


if __name__ == "__main__":
    raise SystemExit(main())
