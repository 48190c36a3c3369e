"""mbox pieces shared by qmail-local and maildir2mbox (qmail-files §5.6). Pure."""

from __future__ import annotations

import re

from pyqmail.formats.dates import mbox_date

_FROM_LINE = re.compile(rb"^(>*From )", re.MULTILINE)


def from_line(sender: bytes, when: float) -> bytes:
    """``From SENDER Www Mmm DD HH:MM:SS YYYY`` + LF; blanks in sender become ``-``."""
    s = sender or b"MAILER-DAEMON"
    s = s.replace(b" ", b"-").replace(b"\t", b"-").replace(b"\n", b"-")
    return b"From " + s + b" " + mbox_date(when).encode() + b"\n"


def quote_from(body: bytes) -> bytes:
    """mboxrd quoting: every line matching ``^>*From `` gets one more ``>``."""
    return _FROM_LINE.sub(rb">\1", body)


def entry(head: bytes, message: bytes) -> bytes:
    """head (From_ and trace lines) + quoted message + the separating empty line.

    One extra LF, two when the message lacks its final one (qmail-local).
    """
    body = quote_from(message)
    return head + body + (b"\n" if body.endswith(b"\n") else b"\n\n")
