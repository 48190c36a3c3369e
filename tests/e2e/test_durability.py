"""Nothing acknowledged is lost, nothing is delivered twice (DESIGN §1a, §3).

200 messages at concurrency 10; the queue writer, send, lspawn and one of
lspawn's delivery workers are each killed with SIGKILL midway; the
supervisor restarts the components, lspawn forks a new worker. Every message that got
250 must be in the Maildir exactly once; no message may appear twice.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from pathlib import Path

from tests.e2e.deliveries import assert_each_acked_once, send_from_threads, token_counts
from tests.harness import init_home, running_mta, wait_until

TOTAL = 200
CONCURRENCY = 10


def kill_a_worker(lspawn_pid: int) -> None:
    """SIGKILL one of lspawn's delivery workers, if one is alive right now."""
    try:
        children = Path(f"/proc/{lspawn_pid}/task/{lspawn_pid}/children").read_text().split()
    except OSError:
        return
    if children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(children[0]), signal.SIGKILL)


def test_kill_writer_and_send_midway_loses_nothing(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    init_home(home)

    with running_mta(home) as mta:

        def before(n: int) -> None:
            if n == TOTAL // 3:
                os.kill(mta.component_pid("queue"), signal.SIGKILL)
            if n == TOTAL // 2:
                os.kill(mta.component_pid("lspawn"), signal.SIGKILL)
            if n == 2 * TOTAL // 3:
                os.kill(mta.component_pid("send"), signal.SIGKILL)
            if n == 5 * TOTAL // 6:
                kill_a_worker(mta.component_pid("lspawn"))

        def message(n: int) -> bytes:
            return f"Subject: durable {n}\r\nX-Token: tok{n}\r\n\r\nmessage {n}\r\n".encode()

        acked = send_from_threads(mta, TOTAL, CONCURRENCY, message, before, timeout=120)
        assert len(acked) > TOTAL // 2, "most messages should be acknowledged"
        wait_until(mta.queue_empty, 60, "every queued message to be delivered")
        log = mta.log()
        assert len(re.findall(r"alert: queue pid \d+ exited", log)) == 1
        assert len(re.findall(r"alert: send pid \d+ exited", log)) == 1
        assert len(re.findall(r"alert: lspawn pid \d+ exited", log)) == 1
        files = mta.maildir_files("postmaster")
    assert_each_acked_once(token_counts(files), acked)
