"""POP3 benchmark: login latency and RETR throughput of the built-in listener.

Starts pyqmail (SMTP off, POP3 on a free port) on a temporary home with one
virtual user whose Maildir holds N messages of SIZE bytes, then measures
the time from connect to +OK after PASS (scrypt ln=14 included, one forked
session each) and the time to RETR every message in one session. Not a
test: nothing here is asserted in `make test`.

    .venv/bin/python bench/pop3_fetch.py [--messages 1000] [--size 4096] [--logins 20]
"""

from __future__ import annotations

import argparse
import os
import poplib
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
PASSWORD = "bench password"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--logins", type=int, default=20)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pyqmail-pop3-bench-"))
    home = tmp / "qmail"
    proc = None
    try:
        subprocess.run([BIN / "pyqmail", "init", "--home", home], check=True, capture_output=True)
        subprocess.run([BIN / "pyqmail", "adduser", "bench", "--home", home], check=True)
        subprocess.run(
            [BIN / "pyqmail", "passwd", "bench", "--home", home],
            input=PASSWORD.encode() + b"\n",
            check=True,
            capture_output=True,
        )
        new = home / "mailboxes" / "bench" / "Maildir" / "new"
        line = b"x" * 70 + b"\n"
        body = b"Subject: bench\n\n" + line * (args.size // len(line))
        for n in range(args.messages):
            (new / f"{1_700_000_000 + n}.M{n}P1.bench").write_bytes(body)
        log = open(tmp / "log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                *(BIN / "pyqmail", "start", "--home", home, "--smtp", "off", "--pop3", ":0"),
                *("--qmtp", "off", "--qmqp", "off"),
            ],
            stdout=log,
            stderr=log,
        )
        port = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = (tmp / "log").read_text()
            m = re.search(r"pop3 listening on 127\.0\.0\.1:(\d+)", text)
            if m and "pop3d ready" in text:
                port = int(m.group(1))
                break
            time.sleep(0.05)
        assert port, "pyqmail did not start"
        logins = []
        for _ in range(args.logins):
            t0 = time.perf_counter()
            p = poplib.POP3("127.0.0.1", port, timeout=60)
            p.user("bench")
            p.pass_(PASSWORD)
            logins.append(time.perf_counter() - t0)
            p.quit()
        p = poplib.POP3("127.0.0.1", port, timeout=60)
        p.user("bench")
        p.pass_(PASSWORD)
        count, total = p.stat()
        t0 = time.perf_counter()
        got = 0
        for n in range(1, count + 1):
            got += sum(len(ln) + 1 for ln in p.retr(n)[1])
        elapsed = time.perf_counter() - t0
        p.quit()
        assert count == args.messages, (count, args.messages)
        print(
            f"login (connect to +OK after PASS), median of {args.logins}: "
            f"{statistics.median(logins) * 1000:.1f} ms "
            f"(min {min(logins) * 1000:.1f}, max {max(logins) * 1000:.1f})"
        )
        print(
            f"RETR {count} messages ({total} bytes on disk) in one session: {elapsed:.2f} s, "
            f"{count / elapsed:.0f} msg/s, {got / elapsed / 1e6:.1f} MB/s"
        )
        return 0
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        if os.environ.get("KEEP") is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
