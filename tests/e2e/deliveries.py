"""Reading delivery outcomes from the activity log, for the local-delivery e2e tests."""

from __future__ import annotations

import re
import smtplib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

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


def token_counts(files: Iterable[Path]) -> Counter[int]:
    """How many delivered files carry each ``X-Token: tokN`` (load tests' bodies)."""
    tokens = Counter[int]()
    for f in files:
        m = re.search(rb"X-Token: tok(\d+)", f.read_bytes())
        assert m, f
        tokens[int(m.group(1))] += 1
    return tokens


def assert_each_acked_once(tokens: Counter[int], acked: set[int]) -> None:
    """DESIGN 1a: every acknowledged message delivered, none twice."""
    duplicates = {n: c for n, c in tokens.items() if c > 1}
    assert not duplicates, f"delivered more than once: {duplicates}"
    missing = acked - set(tokens)
    assert not missing, f"acknowledged but not delivered: {sorted(missing)}"
