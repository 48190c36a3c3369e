"""Reading delivery outcomes from the activity log, for the local-delivery e2e tests."""

from __future__ import annotations

import re
import smtplib
import threading
from collections import Counter
from collections.abc import Callable, Iterable
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


def send_from_threads(
    mta: RunningMta,
    total: int,
    clients: int,
    message: Callable[[int], bytes],
    before: Callable[[int], None] = lambda _n: None,
    timeout: float = 240,
) -> set[int]:
    """Messages 0 .. total-1 to postmaster@localhost from `clients` threads,
    one SMTP session each; before(n) runs first (a kill, say). The numbers
    acknowledged with 250: one refused or cut off may arrive, never twice."""
    acked: set[int] = set()
    lock = threading.Lock()
    counter = iter(range(total))

    def client() -> None:
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            before(n)
            try:
                with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=30) as c:
                    c.sendmail("a@example.org", ["postmaster@localhost"], message(n))
            except (smtplib.SMTPException, OSError):
                continue
            with lock:
                acked.add(n)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a client is still sending"
    return acked
