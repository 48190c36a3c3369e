"""kill -9 of the queue writer while smtpd holds pooled connections to it.

smtpd keeps idle connections to the writer and sends message after message
over each. Killed while they are idle, a restarted writer must cost no
client a 451: smtpd notices the dead connections before it uses them.
Killed under load (connections mid-message, commits in flight), every
message that got 250 is delivered exactly once and nothing twice.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.e2e.deliveries import assert_each_acked_once, token_counts
from tests.harness import RunningMta, init_home, running_mta, wait_until

RCPT = "postmaster@localhost"


def body(n: int) -> bytes:
    return f"Subject: pooled {n}\r\nX-Token: tok{n}\r\n\r\nmessage {n}\r\n".encode()


def kill_writer(mta: RunningMta) -> None:
    """SIGKILL the writer and wait for the supervisor's new one to be ready."""
    ready = mta.log().count("status: queue writer ready")
    os.kill(mta.component_pid("queue"), signal.SIGKILL)
    wait_until(
        lambda: mta.log().count("status: queue writer ready") > ready,
        60,
        "the queue writer to be restarted",
    )


def writers_at_least(mta: RunningMta, count: int) -> Callable[[], bool]:
    return lambda: mta.log().count("status: queue writer ready") >= count


def test_idle_pooled_connections_to_a_killed_writer_cost_no_451(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    with running_mta(home) as mta:
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=60) as c:
            for n in range(3):
                c.sendmail("a@example.org", [RCPT], body(n))  # raises on anything but 250
            kill_writer(mta)
            for n in range(3, 6):
                c.sendmail("a@example.org", [RCPT], body(n))
        wait_until(mta.queue_empty, 60, "every message to be delivered")
        assert token_counts(mta.maildir_files("postmaster")) == Counter(range(6))


def test_kill_writer_under_load_with_pooled_connections(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    total, clients, kills_at = 150, 6, (40, 80, 120)
    acked: set[int] = set()
    lock = threading.Lock()
    counter = iter(range(total))

    with running_mta(home) as mta:
        writers_ready = mta.log().count("status: queue writer ready")

        def client() -> None:
            # one SMTP session sends many messages: smtpd reuses its writer
            # connections from message to message, and the kills hit them
            conn: smtplib.SMTP | None = None
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    break
                if n in kills_at:
                    kill_writer(mta)
                try:
                    if conn is None:
                        conn = smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=60)
                    conn.sendmail("a@example.org", [RCPT], body(n))
                except (smtplib.SMTPException, OSError) as exc:
                    # not acknowledged: it may or may not arrive, never twice
                    if not isinstance(exc, smtplib.SMTPResponseException):
                        conn = None
                    # don't burn through the messages while the writer is down
                    wait_until(
                        writers_at_least(mta, writers_ready + sum(k <= n for k in kills_at)),
                        60,
                        "the queue writer to be back",
                    )
                    continue
                with lock:
                    acked.add(n)
            if conn is not None:
                conn.quit()

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        assert not any(t.is_alive() for t in threads)
        assert len(re.findall(r"alert: queue pid \d+ exited", mta.log())) == len(kills_at)
        wait_until(mta.queue_empty, 90, "every queued message to be delivered")
        tokens = token_counts(mta.maildir_files("postmaster"))
    assert len(acked) > total // 2, "most messages should be acknowledged"
    assert acked & set(range(kills_at[-1] + clients, total)), "acks after the last kill"
    assert_each_acked_once(tokens, acked)
