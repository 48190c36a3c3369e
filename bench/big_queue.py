"""Large-queue benchmark: send's start-up and scheduling with 100,000 queued messages.

Fills a fresh home's queue directly in qmail's format (tests/queuefill.py,
the files send itself would have left) with N preprocessed messages for
remote recipients, plus one new message in todo/ for a local Maildir, then
starts pyqmail and reports:
  - seconds from `pyqmail start` to the new message in the Maildir
  - seconds until send has loaded the whole queue ("loaded N queued")
  - send's RSS once loaded, and after a SIGALRM retry of everything
With --due the queued messages are all due at start (their remote domain is
routed to a closed loopback port, so every attempt defers at once): the new
message must still be delivered promptly while send works through the backlog.
With --todo they are all in todo/ instead (queued, never preprocessed): the
figure is how long preprocessing the backlog takes; the new message, last in
line, is delivered when its turn comes.
Not a test: nothing here is asserted in `make test`.

    .venv/bin/python bench/big_queue.py [--messages 100000] [--due]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyqmail.config import Home
from tests.queuefill import write_preprocessed, write_todo

BIN = Path(sys.executable).parent
BODY = b"Subject: queued\n\n" + b"x" * 1000 + b"\n"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wait_for(pred: Callable[[], bool], start: float, timeout: float) -> float:
    """Seconds from start until pred() holds (polled every 10 ms)."""
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        time.sleep(0.01)
    raise SystemExit(f"timed out after {timeout} s")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--due", action="store_true", help="every queued message due at start")
    ap.add_argument("--todo", action="store_true", help="every message still in todo/")
    ap.add_argument("--keep", action="store_true", help="keep the temporary home")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pyqmail-bigq-"))
    root = tmp / "qmail"
    subprocess.run([str(BIN / "pyqmail"), "init", "--home", str(root)], check=True, stdout=-3)
    (root / "control" / "resolvers").write_text("127.0.0.1:9\n")
    (root / "control" / "smtproutes").write_text("example.net:127.0.0.1:9\n")
    home = Home(str(root))
    now = time.time()
    t0 = time.monotonic()
    base = int(now * 1000) - 10 * args.messages
    for i in range(args.messages):
        if args.todo:
            write_todo(home, base + i, b"bulk@example.org", [b"r%d@example.net" % i], BODY)
            continue
        write_preprocessed(
            home,
            base + i,
            b"bulk@example.org",
            BODY,
            remote=[(b"r%d@example.net" % i, False)],
            birth=now - 3600,
            next_time=now - 1 if args.due else now + 86400,
        )
    new_id = base + args.messages + 1
    write_todo(home, new_id, b"a@example.org", [b"postmaster@localhost"], b"Subject: new\n\nhi\n")
    fill_s = time.monotonic() - t0
    # on disk, as a queue left by an earlier run is: otherwise send's first
    # group commit (a syncfs, control/syncmode) writes back the whole fill
    os.sync()
    print(f"filled {args.messages} messages in {fill_s:.1f} s", file=sys.stderr)

    log_path = root / "log" / "pyqmail.log"
    maildir = root / "mailboxes" / "postmaster" / "Maildir" / "new"
    with open(log_path, "ab") as log_fh:
        start = time.monotonic()
        proc = subprocess.Popen(
            [str(BIN / "pyqmail"), "start", "--home", str(root), "--smtp", "off"],
            stdout=log_fh,
            stderr=log_fh,
        )
    try:
        first_s = wait_for(lambda: any(maildir.iterdir()), start, 3600)
        log = log_path.read_text
        loaded_s = wait_for(lambda: "queued message(s)" in log(), start, 300)
        pid = int(re.findall(r"started send pid (\d+)", log())[-1])
        m = re.search(r"send: status: loaded (\d+) queued", log())
        loaded = int(m.group(1)) if m else -1
        rss_loaded = rss_mb(pid)
        stamps = [float(x) for x in re.findall(r"@([\d.]+) send: status: loaded", log())]
        started = [float(x) for x in re.findall(r"@([\d.]+) pyqmail: status: started send", log())]
        load_s = stamps[-1] - started[-1] if stamps and started else -1.0
        # SIGALRM: every message due now; how long until send answers again
        proc.send_signal(signal.SIGALRM)
        time.sleep(2)
        rss_alarm = rss_mb(pid)
        attempts = len(re.findall(r"starting delivery", log()))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    result = {
        "messages": args.messages,
        "due_at_start": args.due,
        "in_todo": args.todo,
        "fill_s": round(fill_s, 1),
        "start_to_new_message_delivered_s": round(first_s, 3),
        "start_to_queue_loaded_s": round(loaded_s, 3),
        "send_load_time_s": round(load_s, 3),
        "loaded": loaded,
        "send_rss_mb_loaded": round(rss_loaded, 1),
        "send_rss_mb_2s_after_sigalrm": round(rss_alarm, 1),
        "delivery_attempts_started": attempts,
    }
    print(json.dumps(result, indent=2))
    if args.keep:
        print(f"home kept at {root}", file=sys.stderr)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
