"""Reused queue files (queue/spare.py) under kill -9 of the writer and of clean.

Bodies shrink and grow from one message to the next, so a reused file that
kept a byte of its last message, or a spare handed out twice, would show up
in a Maildir copy. Every acknowledged message must arrive exactly once and
byte for byte as sent.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from tests.e2e.deliveries import assert_each_acked_once, send_from_threads, token_counts
from tests.harness import RunningMta, init_home, running_mta, wait_until

RCPT = "postmaster@localhost"
SIZES = (200, 30_000, 1_000, 9_000, 50, 120_000, 3_000)


def text(n: int) -> bytes:
    """Message n's body: its own filler, of a size that changes message to message."""
    line = f"message {n:05d} ".encode() * 4 + b"\r\n"
    size = SIZES[n % len(SIZES)]
    return line * (size // len(line) + 1)


def message(n: int) -> bytes:
    return f"Subject: spare {n}\r\nX-Token: tok{n}\r\n\r\n".encode() + text(n)


def restart(mta: RunningMta, name: str, ready: str) -> None:
    before = mta.log().count(ready)
    os.kill(mta.component_pid(name), signal.SIGKILL)
    wait_until(lambda: mta.log().count(ready) > before, 60, f"{name} to be restarted")


def test_reused_files_deliver_every_message_whole_through_kills(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    total, clients = 140, 4
    kills = {45: ("queue", "status: queue writer ready"), 95: ("clean", "started clean pid")}

    with running_mta(home) as mta:

        def before(n: int) -> None:
            if n in kills:
                restart(mta, *kills[n])

        acked = send_from_threads(mta, total, clients, message, before)
        wait_until(mta.queue_empty, 90, "every queued message to be delivered")
        files = mta.maildir_files("postmaster")
    assert len(acked) > total // 2
    assert_each_acked_once(token_counts(files), acked)
    for f in files:
        got = f.read_bytes()
        n = int(re.search(rb"X-Token: tok(\d+)", got).group(1))  # type: ignore[union-attr]
        head, sep, body = got.partition(b"\n\n")
        assert sep, f
        assert body == text(n).replace(b"\r\n", b"\n"), f"message {n} is not as sent"
        assert head.count(b"X-Token:") == 1
    # the writer that ran to the end took files from queue/spare/
    reused = re.findall(r"commit round\(s\), (\d+) file\(s\) reused", mta.log())
    assert reused
    assert int(reused[-1]) > 0
