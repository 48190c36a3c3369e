"""qmail-tcpok and qmail-tcpto: clear and show the remote dead-host table.

Runs as: root or qmailr (whoever may write queue/lock/tcpto).
Reads:   queue/lock/tcpto.
Writes:  queue/lock/tcpto (qmail-tcpok only), under the table's lock.
Exit:    0, or 111 when the table cannot be read or written (qmail's codes).
"""

from __future__ import annotations

import sys
import time

from pyqmail.config import Home
from pyqmail.remote.tcpto import TcpTo


def _table() -> TcpTo:
    return TcpTo(Home.from_env().q("lock", "tcpto"))


def tcpok() -> int:
    try:
        _table().clear()
    except OSError as exc:
        print(f"qmail-tcpok: fatal: unable to clear the tcpto table: {exc}", file=sys.stderr)
        return 111
    return 0


def tcpto() -> int:
    try:
        entries = _table().entries()
    except OSError as exc:
        print(f"qmail-tcpto: fatal: unable to read the tcpto table: {exc}", file=sys.stderr)
        return 111
    now = int(time.time())
    for e in entries:
        if e.count:
            print(
                f"{e.ip} timed out {max(0, now - e.when)} seconds ago; # recent timeouts: {e.count}"
            )
    return 0
