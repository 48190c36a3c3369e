"""Write messages straight into a stopped MTA's queue, in each of qmail's states.

For tests of start-up recovery and for bench/big_queue.py: the files are
exactly what the queue writer and send would have left (qmail-files §6), so
send cannot tell these messages from ones it queued itself. Never use this
on a queue while the MTA runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from pyqmail.config import Home
from pyqmail.formats import envelope as env_fmt
from pyqmail.formats.qsbmf import Failure, format_bounce_record


def write_mess(home: Home, msg_id: int, body: bytes) -> None:
    with open(home.split_path("mess", msg_id), "wb") as fh:
        fh.write(b"Received: (qmail 1 invoked by uid 0); 1 Jan 2026 00:00:00 -0000\n" + body)


def write_todo(home: Home, msg_id: int, sender: bytes, rcpts: Iterable[bytes], body: bytes) -> None:
    """State S4: queued, not yet preprocessed (mess/S/N and todo/N)."""
    write_mess(home, msg_id, body)
    env = env_fmt.QueuedEnvelope(0, 1, sender, tuple(rcpts))
    with open(home.q("todo", str(msg_id)), "wb") as fh:
        fh.write(env_fmt.format_todo(env))


def write_preprocessed(
    home: Home,
    msg_id: int,
    sender: bytes,
    body: bytes,
    *,
    local: Iterable[tuple[bytes, bool]] = (),
    remote: Iterable[tuple[bytes, bool]] = (),
    birth: float | None = None,
    next_time: float | None = None,
    failures: Iterable[Failure] = (),
) -> None:
    """State S5: mess/S/N, info/S/N (mtime = birth) and the channel files
    (records (address, done); mtime = next pass) plus bounce/N records."""
    write_mess(home, msg_id, body)
    info = home.split_path("info", msg_id)
    with open(info, "wb") as fh:
        fh.write(env_fmt.format_todo(env_fmt.QueuedEnvelope(0, 1, sender, ())))
    if birth is not None:
        os.utime(info, (birth, birth))
    for kind, recs in (("local", list(local)), ("remote", list(remote))):
        if not recs:
            continue
        path = home.split_path(kind, msg_id)
        with open(path, "wb") as fh:
            fh.write(b"".join((b"D" if done else b"T") + a + b"\0" for a, done in recs))
        if next_time is not None:
            os.utime(path, (next_time, next_time))
    records = b"".join(format_bounce_record(f) for f in failures)
    if records:
        with open(home.q("bounce", str(msg_id)), "wb") as fh:
            fh.write(records)
