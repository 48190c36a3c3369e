"""Load clients: an asyncio SMTP client (one connection per message), smtp-source,
idle connections, and the sink's counters."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass

from pyqmail.unix.loop import run as run_loop

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SENDER = "bench@example.org"


def message(size: int, ident: str) -> bytes:
    line = b"x" * 76 + b"\r\n"
    head = b"Subject: bench\r\nX-Bench-Id: " + ident.encode() + b"\r\n\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def _expect(reader: asyncio.StreamReader, prefix: bytes) -> None:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            if not line.startswith(prefix):
                raise ConnectionError(line.decode(errors="replace"))
            return


async def transaction(port: int, rcpt: str, body: bytes, timeout: float = 60) -> float | None:
    """One message on its own connection; seconds taken, None if not accepted."""
    t0 = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await _expect(reader, b"220")
            writer.write(b"EHLO bench.invalid\r\n")
            await _expect(reader, b"250")
            writer.write(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
            await _expect(reader, b"250")
            await _expect(reader, b"250")
            await _expect(reader, b"354")
            writer.write(body + b".\r\n")
            await _expect(reader, b"250")
            writer.write(b"QUIT\r\n")
            await _expect(reader, b"221")
    except (OSError, TimeoutError):
        return None
    finally:
        if writer is not None:
            writer.close()
    return time.perf_counter() - t0


@dataclass
class LoadResult:
    elapsed: float
    latencies: list[float]
    accepted: int


async def _load(port: int, n: int, conc: int, size: int, rcpt: str, tag: str) -> LoadResult:
    latencies: list[float] = []
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            took = await transaction(port, rcpt, message(size, f"{tag}-{i}"))
            if took is not None:
                latencies.append(took)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return LoadResult(time.perf_counter() - t0, latencies, len(latencies))


def load(port: int, n: int, conc: int, size: int, rcpt: str, tag: str) -> LoadResult:
    return run_loop(_load(port, n, conc, size, rcpt, tag))


def smtp_source(port: int, n: int, conc: int, size: int, rcpt: str) -> float:
    """Postfix's smtp-source as the client: seconds to hand over n messages."""
    t0 = time.perf_counter()
    subprocess.run(
        [
            SMTP_SOURCE,
            "-s", str(conc),
            "-m", str(n),
            "-l", str(size),
            "-f", SENDER,
            "-t", rcpt,
            "-M", "bench.invalid",
            f"127.0.0.1:{port}",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )  # fmt: skip
    return time.perf_counter() - t0


async def _idle_then_one(
    port: int, idle: int, rcpt: str, size: int, cap: float
) -> tuple[int, float | None]:
    conns: list[asyncio.StreamWriter] = []

    async def one() -> None:
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(5):
                _, w = await asyncio.open_connection("127.0.0.1", port)
                conns.append(w)

    try:
        await asyncio.gather(*(one() for _ in range(idle)))
        await asyncio.sleep(0.5)
        took = await transaction(port, rcpt, message(size, "idle-probe"), timeout=cap)
        return len(conns), took
    finally:
        for w in conns:
            w.close()


def idle_then_one(
    port: int, idle: int, rcpt: str, size: int, cap: float
) -> tuple[int, float | None]:
    """Hold idle connections open, then time one ordinary transaction (None: over cap s)."""
    return run_loop(_idle_then_one(port, idle, rcpt, size, cap))


@dataclass
class SinkStats:
    messages: int
    recipients: int
    distinct: int


def sink_command(port: int, verb: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(verb + b"\r\n")
        reply = f.readline()
        s.sendall(b"QUIT\r\n")
        return reply


def sink_stats(port: int) -> SinkStats:
    parts = sink_command(port, b"XSTAT").split()
    return SinkStats(int(parts[1]), int(parts[2]), int(parts[3]))


def sink_reset(port: int) -> None:
    sink_command(port, b"XRESET")
