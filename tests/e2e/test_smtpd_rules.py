"""pyqmail start --rules FILE: tcprules for the built-in listeners, with
QMAILQUEUE per client (the content-filter hook) and deny rules."""

from __future__ import annotations

import smtplib
import socket
from pathlib import Path

from tests.harness import init_home, running_mta, wait_until

QQ = """#!/bin/sh
cat > "$0.message"
cat <&1 > "$0.envelope"
exit 0
"""


def test_rules_file_gives_qmailqueue_and_denies(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    qq = tmp_path / "qq.sh"
    qq.write_text(QQ)
    qq.chmod(0o755)
    rules = tmp_path / "rules"
    rules.write_text(f'127.0.0.2:deny\n127.:allow,RELAYCLIENT="",QMAILQUEUE="{qq}"\n')
    with running_mta(home, "--rules", str(rules)) as mta:
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=10) as c:
            c.sendmail("a@example.org", ["friend@example.net"], b"Subject: qq\r\n\r\nhi\r\n")
        wait_until(lambda: Path(f"{qq}.envelope").exists(), 10, "the QMAILQUEUE program")
        assert mta.queue_empty()  # the filter had it, not our queue
        with socket.socket() as s:  # the first matching rule: 127.0.0.2 is denied
            s.settimeout(10)
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", mta.smtp_port))
            assert s.makefile("rb").readline().startswith(b"421 sorry, not accepting")
    # RELAYCLIENT from the rules let it relay; the filter got qmail-queue's fds
    assert Path(f"{qq}.envelope").read_bytes() == b"Fa@example.org\0Tfriend@example.net\0\0"
    assert Path(f"{qq}.message").read_bytes().endswith(b"\nSubject: qq\n\nhi\n")
