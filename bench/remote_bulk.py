"""Remote bulk-delivery benchmark: what connection reuse and batching buy.

Starts pyqmail on a temporary home with smtproutes to a loopback SMTP sink,
injects N messages with R recipients each at one domain over SMTP, and
times until the sink holds every recipient. Three settings:

  reuse+batch   the defaults (remoteidletime 10, remotebatch 50)
  batch only    remoteidletime 0: a new connection per delivery
  qmail-like    remoteidletime 0 and remotebatch 1: one connection per recipient

Not a test: nothing here is asserted in `make test`.

    .venv/bin/python bench/remote_bulk.py [--messages 1000] [--rcpts 2]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import smtplib
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pyqmail.config import RemoteConfig
from pyqmail.remote.deliver import Remote, RemoteJob
from tests.harness import (
    init_home,
    running_mta,
    running_sink,
    wait_until,
    write_control,
)

SETTINGS = {
    "reuse+batch": {},
    "batch only": {"remoteidletime": "0"},
    "qmail-like": {"remoteidletime": "0", "remotebatch": "1"},
}
CLIENTS = 8


def run(n: int, rcpts: int, controls: dict[str, str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, running_sink() as sink:
        home = Path(tmp) / "qmail"
        init_home(home)
        write_control(home, "smtproutes", f"example.net:127.0.0.1:{sink.port}\n")
        for name, value in controls.items():
            write_control(home, name, value + "\n")
        with running_mta(home) as mta:
            t0 = time.monotonic()

            def client(k: int) -> None:
                with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=120) as c:
                    for i in range(k, n, CLIENTS):
                        to = [f"u{i}-{r}@example.net" for r in range(rcpts)]
                        c.sendmail("bench@example.org", to, b"Subject: bulk\r\n\r\nbody\r\n")

            threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            injected = time.monotonic() - t0

            def all_in() -> bool:
                return sum(len(m.rcpts) for m in sink.messages) >= n * rcpts

            wait_until(all_in, 900, "every recipient at the sink")
            total = time.monotonic() - t0
        return {
            "inject_s": injected,
            "end_to_end_s": total,
            "msg_per_s": n / total,
            "connections": sink.connections,
            "transactions": len(sink.messages),
        }


def run_client_only(n: int, rcpts: int, controls: dict[str, str]) -> dict[str, float]:
    """rspawn's side alone: n deliveries, 20 at a time, straight to the sink."""
    batch = int(controls.get("remotebatch", "50"))
    with tempfile.TemporaryDirectory() as tmp, running_sink() as sink:
        msg = Path(tmp) / "msg"
        msg.write_bytes(b"Subject: bulk\n\nbody\n")
        cfg = RemoteConfig(
            "bench.example", {"example.net": f"127.0.0.1:{sink.port}"}, 10, 60, ("127.0.0.1:9",)
        )
        cfg = dataclasses.replace(cfg, remoteidletime=int(controls.get("remoteidletime", "10")))
        jobs = []
        for i in range(n):
            to = tuple(b"u%d-%d@example.net" % (i, r) for r in range(rcpts))
            jobs += [to[k : k + batch] for k in range(0, rcpts, batch)]

        async def go() -> float:
            remote = Remote(cfg, str(Path(tmp) / "tcpto"))
            sem = asyncio.Semaphore(20)

            async def one(to: tuple[bytes, ...]) -> None:
                async with sem:
                    job = RemoteJob(str(msg), b"bench@example.org", to, "example.net")
                    reports = await remote.deliver(job)
                    assert all(r.startswith(b"K") for r in reports), reports

            t0 = time.monotonic()
            await asyncio.gather(*(one(to) for to in jobs))
            took = time.monotonic() - t0
            await remote.pool.close_all()
            return took

        took = asyncio.run(go())
        return {"s": took, "msg_per_s": n / took, "connections": sink.connections}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--rcpts", type=int, default=2)
    args = ap.parse_args()
    print(f"{args.messages} messages x {args.rcpts} recipients at one domain, loopback sink")
    print("| setting | end to end s | msg/s | connections | transactions |")
    print("|---|---|---|---|---|")
    for label, controls in SETTINGS.items():
        r = run(args.messages, args.rcpts, controls)
        print(
            f"| {label} | {r['end_to_end_s']:.1f} | {r['msg_per_s']:.0f} "
            f"| {r['connections']:.0f} | {r['transactions']:.0f} |",
            flush=True,
        )
    print()
    print("remote client alone (no queue, no injection), 20 deliveries at a time")
    print("| setting | s | msg/s | connections |")
    print("|---|---|---|---|")
    for label, controls in SETTINGS.items():
        r = run_client_only(args.messages, args.rcpts, controls)
        print(
            f"| {label} | {r['s']:.2f} | {r['msg_per_s']:.0f} | {r['connections']:.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
