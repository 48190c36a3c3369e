"""Reading delivery outcomes from the activity log, for the local-delivery e2e tests."""

from __future__ import annotations

import re
import smtplib

from tests.harness import RunningMta, wait_until

_START = re.compile(r"starting delivery (\d+): msg \d+ to (?:local|remote) (\S+)")
_RESULT = re.compile(r"delivery (\d+): (success|failure|deferral): (.*)")


def results(log: str) -> dict[str, list[tuple[str, str]]]:
    """recipient -> [(success|failure|deferral, report text)], in log order."""
    rcpt_of: dict[str, str] = {}
    out: dict[str, list[tuple[str, str]]] = {}
    for line in log.splitlines():
        m = _START.search(line)
        if m:
            rcpt_of[m.group(1)] = m.group(2)
            continue
        m = _RESULT.search(line)
        if m and m.group(1) in rcpt_of:
            out.setdefault(rcpt_of[m.group(1)], []).append((m.group(2), m.group(3)))
    return out


def wait_result(mta: RunningMta, rcpt: str, timeout: float = 30) -> tuple[str, str]:
    """The first outcome logged for rcpt."""
    wait_until(lambda: rcpt in results(mta.log()), timeout, f"a delivery result for {rcpt}")
    return results(mta.log())[rcpt][0]


def send(mta: RunningMta, sender: str, rcpts: list[str], body: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=30) as c:
        refused = c.sendmail(sender, rcpts, body)
    assert not refused, refused
