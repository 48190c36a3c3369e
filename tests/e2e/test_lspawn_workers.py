"""lspawn runs local deliveries in reusable workers, not a fork per delivery.

A .qmail program line records the pid of the process that ran it ($PPID of
sh is the delivering worker): 30 messages delivered one after another must
come from far fewer processes than messages, each still delivered once.
"""

from __future__ import annotations

import smtplib
from pathlib import Path

from tests.harness import init_home, pyqmail, running_mta, wait_until

MESSAGES = 30


def test_sequential_deliveries_reuse_a_worker(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    assert pyqmail("adduser", "carol", "--home", str(home)).returncode == 0
    carol = home / "mailboxes" / "carol"
    (carol / ".qmail").write_text('|echo "$PPID" >> pids.txt\n./Maildir/\n')
    with running_mta(home) as mta:
        for n in range(MESSAGES):
            with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=30) as c:
                c.sendmail("s@example.org", ["carol@localhost"], f"Subject: {n}\r\n\r\nx\r\n")
            # one at a time: each delivery done before the next is sent
            mta.wait_for_maildir("carol", n + 1, timeout=30)
        wait_until(mta.queue_empty, 30, "the queue to empty")
        lspawn = mta.component_pid("lspawn")
        assert len(mta.maildir_files("carol")) == MESSAGES
    pids = (carol / "pids.txt").read_text().split()
    assert len(pids) == MESSAGES
    assert lspawn not in {int(p) for p in pids}, "delivered in lspawn itself"
    assert len(set(pids)) <= 3, f"{len(set(pids))} processes for {MESSAGES} deliveries"
