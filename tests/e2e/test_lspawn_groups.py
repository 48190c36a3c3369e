"""Deliveries grouped on one lspawn worker: exactly once under kill -9, no waiting behind programs.

lspawn queues the Maildir-only deliveries for one user on one worker, which
commits them as a group (two syncs per group). Killing that worker again and
again while 200 messages arrive at concurrency 10 hits groups at every step
(written, synced, linked, reported): each acknowledged message must still be
in the Maildir exactly once. And a delivery that runs a slow program must
not hold up the quick ones queued after it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import threading
import time
from pathlib import Path

from tests.e2e.deliveries import assert_each_acked_once, send_from_threads, token_counts
from tests.harness import init_home, pyqmail, running_mta, wait_until, write_control

TOTAL = 200
CONCURRENCY = 10
KILLS = 8


def workers_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_killing_the_grouping_worker_repeatedly_delivers_each_message_once(
    tmp_path: Path,
) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    write_control(home, "retryunit", "10\n")  # a crashed delivery is retried within a second
    killed: list[int] = []
    done = threading.Event()

    with running_mta(home) as mta:
        lspawn = mta.component_pid("lspawn")

        def killer() -> None:
            # a worker killed every few deliveries, whatever it is doing
            last = 0
            deadline = time.monotonic() + 120
            while len(killed) < KILLS and not done.is_set() and time.monotonic() < deadline:
                delivered = len(mta.maildir_files("postmaster"))
                if delivered >= last + TOTAL // (KILLS + 2):
                    for pid in workers_of(lspawn):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                            killed.append(pid)
                    last = delivered
                time.sleep(0.005)

        def message(n: int) -> bytes:
            return f"Subject: grouped {n}\r\nX-Token: tok{n}\r\n\r\nmessage {n}\r\n".encode()

        kill_thread = threading.Thread(target=killer)
        kill_thread.start()
        acked = send_from_threads(mta, TOTAL, CONCURRENCY, message, timeout=120)
        done.set()
        kill_thread.join(30)
        assert len(acked) == TOTAL, "only workers were killed: every message is accepted"
        wait_until(mta.queue_empty, 120, "every queued message to be delivered")
        assert killed, "no worker was ever killed: the test proved nothing"
        assert lspawn == mta.component_pid("lspawn"), "lspawn itself must survive its workers"
        files = mta.maildir_files("postmaster")
        log = mta.log()
    assert re.search(r"lspawn worker \d+ died", log)
    assert_each_acked_once(token_counts(files), acked)
    assert not list((home / "mailboxes" / "postmaster" / "Maildir" / "tmp").iterdir())


def test_quick_deliveries_do_not_wait_behind_a_slow_program(tmp_path: Path) -> None:
    """All users share one worker identity here (embedded mode): the worker running
    the program said SLOW, so the Maildir deliveries go to another worker."""
    home = tmp_path / "qmail"
    init_home(home)
    for name in ("slow", "quick"):
        assert pyqmail("adduser", name, "--home", str(home)).returncode == 0
    slow = home / "mailboxes" / "slow"
    gate = tmp_path / "gate"
    # bounded: gives up after about 60 s if the test never opens the gate
    (slow / ".qmail").write_text(
        f"|touch started; i=0; while [ ! -e {gate} ] && [ $i -lt 1200 ]; "
        "do sleep 0.05; i=$((i+1)); done\n./Maildir/\n"
    )
    with running_mta(home) as mta:
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=30) as c:
            c.sendmail("s@example.org", ["slow@localhost"], b"Subject: slow\r\n\r\nx\r\n")
        wait_until((slow / "started").exists, 30, "the slow program to start")
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=30) as c:
            for n in range(5):
                c.sendmail("s@example.org", ["quick@localhost"], f"Subject: {n}\r\n\r\nx\r\n")
        # while the program still waits for the gate
        mta.wait_for_maildir("quick", 5, timeout=45)
        assert not mta.maildir_files("slow")
        gate.touch()
        mta.wait_for_maildir("slow", 1, timeout=60)
        wait_until(mta.queue_empty, 30, "the queue to empty")
