"""Read-only views of queued messages, in qmail-qread's format.

Shared by qmail-qread, ``pyqmail queue list|show`` and send's control
channel. Only reads info/, local/, remote/, bounce/, hold/ and mess/; a file
that vanishes while it is read (the message finished meanwhile) makes the
message disappear from the listing, never an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from pyqmail.config import SPLIT, Home
from pyqmail.formats import envelope as env_fmt
from pyqmail.formats.dates import qread_date

CHANNELS = ("local", "remote")
INFO_LIMIT = 1 << 16
CHANNEL_LIMIT = 64 << 20


def hold_path(home: Home, msg_id: int) -> str:
    """queue/hold/N: present while an operator holds message N (flat, like bounce/)."""
    return home.q("hold", str(msg_id))


def queued_ids(home: Home) -> list[int]:
    """Every preprocessed message (one with info/S/N), sorted."""
    return sorted(
        int(name)
        for sub in range(SPLIT)
        for name in os.listdir(home.q("info", str(sub)))
        if name.isdigit()
    )


def describe(home: Home, msg_id: int, *, show_held: bool = True) -> list[str] | None:
    """qmail-qread's lines for one message; None when it is not (or no longer) queued.

    Head: ``DD Mon YYYY HH:MM:SS GMT  #ID  SIZE  <sender>`` then `` bouncing``
    when bounce/N exists and, with show_held, `` held`` when hold/N exists
    (pyqmail's addition; qmail-qread passes False to keep qmail's format).
    Then one line per recipient: ``[  done]<TAB>local|remote<TAB>address``.
    """
    try:
        st = os.stat(home.split_path("info", msg_id))
        with open(home.split_path("info", msg_id), "rb") as fh:
            info = env_fmt.parse_todo(fh.read(INFO_LIMIT))
        size = os.stat(home.split_path("mess", msg_id)).st_size
    except (OSError, env_fmt.EnvelopeError):
        return None
    sender = info.sender.decode("utf-8", "replace")
    head = f"{qread_date(st.st_mtime)}  #{msg_id}  {size}  <{sender}>"
    if os.path.exists(home.q("bounce", str(msg_id))):
        head += " bouncing"
    if show_held and os.path.exists(hold_path(home, msg_id)):
        head += " held"
    lines = [head]
    for kind, done, addr in recipients(home, msg_id):
        prefix = "  done" if done else ""
        lines.append(f"{prefix}\t{kind}\t{addr.decode('utf-8', 'replace')}")
    return lines


def recipients(home: Home, msg_id: int) -> Iterator[tuple[str, bool, bytes]]:
    """(channel, done, address) for each record of local/S/N then remote/S/N."""
    for kind in CHANNELS:
        try:
            with open(home.split_path(kind, msg_id), "rb") as fh:
                records = env_fmt.parse_channel(fh.read(CHANNEL_LIMIT))
        except (OSError, env_fmt.EnvelopeError):
            continue
        for done, addr in records:
            yield kind, done, addr
