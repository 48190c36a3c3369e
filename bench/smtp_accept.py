"""SMTP accept benchmark: msg/s at a given concurrency, latency, end-to-end time, RSS.

Starts pyqmail on a temporary home, sends N messages of SIZE bytes to a
local Maildir with an asyncio SMTP client at concurrency C, and reports
medians over REPS runs. Every message is counted at the Maildir: nothing
lost, nothing doubled. Not a test: nothing here is asserted in `make test`.

    .venv/bin/python bench/smtp_accept.py [--messages 2000] [--concurrency 10] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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


def rss_kb(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def cpu_by_component(pids: list[int]) -> dict[str, float]:
    """CPU seconds (user+system) so far, by component name."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / tick
        name = next((c.decode() for c in cmd if c.startswith(b"pyqmail.")), "supervisor")
        out[name] = out.get(name, 0.0) + cpu
    return out


def tree(pid: int) -> list[int]:
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for c in children:
        out.extend(tree(int(c)))
    return out


async def one_message(port: int, body: bytes, latencies: list[float]) -> bool:
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def expect(prefix: bytes) -> None:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != b"-":
                if not line.startswith(prefix):
                    raise ConnectionError(line.decode(errors="replace"))
                return

    try:
        await expect(b"220")
        writer.write(b"EHLO bench\r\n")
        await expect(b"250")
        writer.write(b"MAIL FROM:<bench@example.org>\r\nRCPT TO:<postmaster@localhost>\r\nDATA\r\n")
        await expect(b"250")
        await expect(b"250")
        await expect(b"354")
        writer.write(body + b".\r\n")
        await expect(b"250")
        writer.write(b"QUIT\r\n")
        await expect(b"221")
    except ConnectionError:
        return False
    finally:
        writer.close()
    latencies.append(time.perf_counter() - t0)
    return True


async def load(port: int, n: int, conc: int, size: int) -> tuple[float, list[float], int]:
    line = b"x" * 76 + b"\r\n"
    payload = b"Subject: bench\r\n\r\n" + line * max(1, size // len(line))
    latencies: list[float] = []
    queue = iter(range(n))
    results: list[bool] = []

    async def worker() -> None:
        for _ in queue:
            results.append(await one_message(port, payload, latencies))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return time.perf_counter() - t0, latencies, sum(results)


def count_new(md: Path) -> int:
    return len(os.listdir(md / "new")) + len(os.listdir(md / "cur"))


def run_once(n: int, conc: int, size: int, controls: tuple[str, ...] = ()) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="pyqmail-bench-"))
    home = tmp / "qmail"
    subprocess.run(
        [str(BIN / "pyqmail"), "init", "--home", str(home)], check=True, capture_output=True
    )
    (home / "control" / "resolvers").write_text("127.0.0.1:9\n")
    for setting in controls:  # --control NAME=VALUE
        name, _, value = setting.partition("=")
        (home / "control" / name).write_text(value + "\n")
    log = open(tmp / "log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            *(str(BIN / "pyqmail"), "start", "--home", str(home), "--smtp", "127.0.0.1:0"),
            *("--qmtp", "off", "--qmqp", "off", "--submission", "off"),  # SMTP only
            *("--pop3", "off"),
        ],
        stdout=log,
        stderr=log,
    )
    try:
        port = 0
        deadline = time.time() + 20
        while time.time() < deadline and not port:
            m = re.search(r"smtp listening on 127\.0\.0\.1:(\d+)", (tmp / "log").read_text())
            text = (tmp / "log").read_text()
            if m and "smtpd ready" in text and "queue writer ready" in text:
                port = int(m.group(1))
            time.sleep(0.05)
        time.sleep(0.5)
        idle = rss_kb(tree(proc.pid))
        md = home / "mailboxes" / "postmaster" / "Maildir"
        cpu0 = cpu_by_component(tree(proc.pid))
        t0 = time.perf_counter()
        elapsed, lat, ok = asyncio.run(load(port, n, conc, size))
        peak = rss_kb(tree(proc.pid))
        while count_new(md) < ok and time.perf_counter() - t0 < 300:
            time.sleep(0.02)
        e2e = time.perf_counter() - t0
        delivered = count_new(md)
        cpu1 = cpu_by_component(tree(proc.pid))
        cpu = {k: (cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) * 1000 / max(1, ok) for k in cpu1}
        print(
            "CPU ms per message by component:",
            {k: round(v, 2) for k, v in cpu.items()},
            file=sys.stderr,
        )
        lat.sort()
        return {
            "accept_msg_s": ok / elapsed,
            "p50_ms": lat[len(lat) // 2] * 1000,
            "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
            "end_to_end_msg_s": delivered / e2e,
            "acked": ok,
            "delivered": delivered,
            "idle_rss_mb": idle / 1024,
            "loaded_rss_mb": peak / 1024,
            "cpu_ms_per_msg": sum(cpu.values()),
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--control", action="append", default=[], help="NAME=VALUE control file")
    args = ap.parse_args()
    runs = [
        run_once(args.messages, args.concurrency, args.size, tuple(args.control))
        for _ in range(args.reps)
    ]
    for r in runs:
        if r["delivered"] != r["acked"]:
            print(f"COUNT MISMATCH: acked {r['acked']} delivered {r['delivered']}")
            return 1
    keys = [
        "accept_msg_s",
        "p50_ms",
        "p99_ms",
        "end_to_end_msg_s",
        "idle_rss_mb",
        "loaded_rss_mb",
        "cpu_ms_per_msg",
    ]
    summary = {
        k: {
            "median": statistics.median(r[k] for r in runs),
            "min": min(r[k] for r in runs),
            "max": max(r[k] for r in runs),
        }
        for k in keys
    }
    cmd = (
        f"bench/smtp_accept.py --messages {args.messages} --concurrency {args.concurrency} "
        f"--size {args.size} --reps {args.reps}"
    )
    lines = [
        f"`{cmd}` (pyqmail alone, local Maildir delivery, fsync on)",
        "",
        "| metric | median | min - max |",
        "|---|---|---|",
    ]
    for k in keys:
        s = summary[k]
        lines.append(f"| {k} | {s['median']:.1f} | {s['min']:.1f} - {s['max']:.1f} |")
    table = "\n".join(lines)
    print(table)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "smtp_accept.json").write_text(
        json.dumps({"command": cmd, "runs": runs, "summary": summary}, indent=2)
    )
    (out / "smtp_accept.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
