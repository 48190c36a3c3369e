"""QMTP and QMQP accept benchmark: msg/s into the queue and into the Maildir.

Starts pyqmail on a temporary home with QMTP and QMQP listeners and sends N
messages of SIZE bytes to a local Maildir: over QMTP on C connections, each
sending its packages back to back without waiting (the protocol allows it),
then over QMQP, one connection per message, C at a time. Every message is
counted at the Maildir. Not a test: nothing here is asserted in `make test`.

    .venv/bin/python bench/qmtp_accept.py [--messages 1000] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyqmail.proto.qmtp.client import ResponseReader, qmqp_frame, qmtp_package

BIN = Path(sys.executable).parent
RCPT = [b"postmaster@localhost"]


def message(i: int, size: int) -> bytes:
    head = f"Subject: bench {i}\nMessage-ID: <{i}@bench>\n\n".encode()
    line = b"x" * 71 + b"\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def responses(reader: asyncio.StreamReader, count: int) -> list[str]:
    got: list[str] = []
    parser = ResponseReader()
    while len(got) < count:
        r = parser.next_response()
        if r is not None:
            got.append(r.status)
            continue
        data = await reader.read(65536)
        if not data:
            break
        parser.receive_data(data)
    return got


async def qmtp_load(port: int, n: int, conc: int, size: int) -> tuple[float, int]:
    per = [list(range(c, n, conc)) for c in range(conc)]

    async def conn(ids: list[int]) -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"".join(qmtp_package(message(i, size), b"b@example.org", RCPT) for i in ids))
        await writer.drain()
        got = await responses(reader, len(ids))
        writer.close()
        return got.count("K")

    t0 = time.perf_counter()
    oks = await asyncio.gather(*(conn(ids) for ids in per if ids))
    return time.perf_counter() - t0, sum(oks)


async def qmqp_load(port: int, n: int, conc: int, size: int, base: int) -> tuple[float, int]:
    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> int:
        async with sem:
            msg = message(base + i, size)
            prefix, suffix = qmqp_frame(len(msg), b"b@example.org", RCPT)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(prefix + msg + suffix)
            await writer.drain()
            got = await responses(reader, 1)
            writer.close()
            return got.count("K")

    t0 = time.perf_counter()
    oks = await asyncio.gather(*(one(i) for i in range(n)))
    return time.perf_counter() - t0, sum(oks)


def count(md: Path) -> int:
    return len(list((md / "new").iterdir())) + len(list((md / "cur").iterdir()))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--size", type=int, default=4096)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pyqmail-qmtp-bench-"))
    home = tmp / "qmail"
    subprocess.run([str(BIN / "pyqmail"), "init", "--home", str(home)], check=True)
    (home / "control" / "resolvers").write_text("127.0.0.1:9\n")
    log = tmp / "log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [
                *(str(BIN / "pyqmail"), "start", "--home", str(home), "--smtp", "off"),
                *("--qmtp", "127.0.0.1:0", "--qmqp", "127.0.0.1:0"),
                *("--submission", "off"),  # its default port is fixed
            ],
            stdout=fh,
            stderr=fh,
        )
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            text = log.read_text()
            if all(w in text for w in ("qmtpd ready", "qmqpd ready", "queue writer ready")):
                break
            time.sleep(0.05)
        qmtp = int(re.findall(r"qmtp listening on 127\.0\.0\.1:(\d+)", text)[-1])
        qmqp = int(re.findall(r"qmqp listening on 127\.0\.0\.1:(\d+)", text)[-1])
        md = home / "mailboxes" / "postmaster" / "Maildir"
        rows = []
        total = 0
        for name in ("QMTP", "QMQP"):
            t0 = time.perf_counter()
            if name == "QMTP":
                elapsed, ok = asyncio.run(
                    qmtp_load(qmtp, args.messages, args.concurrency, args.size)
                )
            else:
                elapsed, ok = asyncio.run(
                    qmqp_load(qmqp, args.messages, args.concurrency, args.size, 10**6)
                )
            total += ok
            while count(md) < total and time.perf_counter() - t0 < 300:
                time.sleep(0.02)
            e2e = time.perf_counter() - t0
            rows.append(f"| {name} | {ok} | {ok / elapsed:.1f} | {ok / e2e:.1f} |")
        print(
            f"`bench/qmtp_accept.py --messages {args.messages} "
            f"--concurrency {args.concurrency} --size {args.size}`\n"
        )
        print("| protocol | acked (K) | accepted msg/s | end to end msg/s |\n|---|---|---|---|")
        print("\n".join(rows))
        if count(md) != total:
            print(f"COUNT MISMATCH: acked {total} delivered {count(md)}")
            return 1
        return 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
