"""Read-only views of queued messages, in qmail-qread's format.

Shared by qmail-qread, ``pyqmail queue list|show`` and send's control
channel. Only reads info/, local/, remote/, bounce/, hold/ and mess/ (and,
when asked, todo/); a file that vanishes while it is read (the message
finished meanwhile) makes the message disappear from the listing, never an
error.

send delivers new mail first straight from todo/N (send/scheduler.py), so
``pyqmail queue`` also lists messages that have only todo/N, classified
as send does; qmail-qread keeps qmail's listing of preprocessed mail only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from pyqmail.config import SPLIT, Home
from pyqmail.formats import envelope as env_fmt
from pyqmail.formats.dates import qread_date

CHANNELS = ("local", "remote")
INFO_LIMIT = 1 << 16
CHANNEL_LIMIT = 64 << 20
TODO_LIMIT = 64 << 20

Classify = Callable[[bytes], tuple[str, bytes]]  # recipient -> (channel, address)


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


def todo_ids(home: Home) -> list[int]:
    """Every message with todo/N: not preprocessed, or in its first attempt."""
    return sorted(int(name) for name in os.listdir(home.q("todo")) if name.isdigit())


def describe(
    home: Home, msg_id: int, *, show_held: bool = True, classify: Classify | None = None
) -> list[str] | None:
    """qmail-qread's lines for one message; None when it is not (or no longer) queued.

    Head: ``DD Mon YYYY HH:MM:SS GMT  #ID  SIZE  <sender>`` then `` bouncing``
    when bounce/N exists and, with show_held, `` held`` when hold/N exists
    (pyqmail's addition; qmail-qread passes False to keep qmail's format).
    Then one line per recipient: ``[  done]<TAB>local|remote<TAB>address``.
    With classify, a message with only todo/N is described from it (every
    recipient not done: send keeps a first attempt's results in memory).
    """
    try:
        with open(home.split_path("info", msg_id), "rb") as fh:
            info = env_fmt.parse_todo(fh.read(INFO_LIMIT))
            when = os.fstat(fh.fileno()).st_mtime
        size = os.stat(home.split_path("mess", msg_id)).st_size
    except FileNotFoundError:
        return None if classify is None else _describe_todo(home, msg_id, show_held, classify)
    except (OSError, env_fmt.EnvelopeError):
        return None
    lines = [_head(home, msg_id, when, size, info.sender, show_held)]
    for kind, done, addr in recipients(home, msg_id):
        prefix = "  done" if done else ""
        lines.append(f"{prefix}\t{kind}\t{addr.decode('utf-8', 'replace')}")
    return lines


def _describe_todo(
    home: Home, msg_id: int, show_held: bool, classify: Classify
) -> list[str] | None:
    try:
        with open(home.q("todo", str(msg_id)), "rb") as fh:
            todo = env_fmt.parse_todo(fh.read(TODO_LIMIT))
        st = os.stat(home.split_path("mess", msg_id))
    except (OSError, env_fmt.EnvelopeError):
        return None
    # birth is mess/S/N's mtime, the date info/S/N gets too
    lines = [_head(home, msg_id, st.st_mtime, st.st_size, todo.sender, show_held)]
    by_kind: dict[str, list[bytes]] = {kind: [] for kind in CHANNELS}
    for rcpt in todo.recipients:
        kind, addr = classify(rcpt)
        by_kind[kind].append(addr)
    for kind in CHANNELS:
        lines.extend(f"\t{kind}\t{a.decode('utf-8', 'replace')}" for a in by_kind[kind])
    return lines


def _head(home: Home, msg_id: int, when: float, size: int, sender_b: bytes, held: bool) -> str:
    sender = sender_b.decode("utf-8", "replace")
    head = f"{qread_date(when)}  #{msg_id}  {size}  <{sender}>"
    if os.path.exists(home.q("bounce", str(msg_id))):
        head += " bouncing"
    if held and os.path.exists(hold_path(home, msg_id)):
        head += " held"
    return head


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
