"""smtpd asks the lookup service only about recipients that may be local.

For any other address the service's answer is always yes (relaying is
rcpthosts' question, answered in smtpd), so the round trip is skipped.
smtpd's view of which domains are local is send's routing controls, read
again, like the lookup service's, when the supervisor gets SIGHUP.
"""

from __future__ import annotations

import os
import signal
import smtplib
from pathlib import Path

from tests.harness import init_home, running_mta, wait_until, write_control


def rcpt_code(port: int, rcpt: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as c:
        c.ehlo("test.example")
        c.mail("a@example.org")
        code, _ = c.rcpt(rcpt)
        return code


def test_remote_recipients_need_no_lookup_and_sighup_rereads_locals(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    with running_mta(home) as mta:
        assert rcpt_code(mta.smtp_port, "nobody-here@localhost") == 550  # asked: no such user
        lookup = mta.component_pid("lookup")
        os.kill(lookup, signal.SIGSTOP)  # a question now would go unanswered
        try:
            # 127.0.0.1 may relay (init's tcprules): a remote recipient is fine
            # without the lookup service, and its answer is not waited for
            assert rcpt_code(mta.smtp_port, "anyone@example.net") == 250
            assert rcpt_code(mta.smtp_port, "nobody-here@example.net") == 250
        finally:
            os.kill(lookup, signal.SIGCONT)
        # example.net becomes local: after SIGHUP smtpd asks about it too
        write_control(home, "locals", "localhost\nexample.net\n")
        mta.proc.send_signal(signal.SIGHUP)
        wait_until(
            lambda: rcpt_code(mta.smtp_port, "nobody-here@example.net") == 550,
            20,
            "RCPT for a now-local unknown user refused",
        )
        assert rcpt_code(mta.smtp_port, "postmaster@example.net") == 250
