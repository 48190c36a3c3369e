"""A fast loopback SMTP sink that counts what it is given.

Accepts every transaction (PIPELINING, any number of recipients) and counts
messages, recipients and distinct ``X-Bench-Id:`` values, so the benchmark
can check that nothing was lost or doubled. ``XSTAT`` answers
``250 messages recipients distinct-ids``; ``XRESET`` sets them to zero.
Run as its own process so it never shares an event loop with the load.

    python bench/sink.py [--port 0]     # prints "port N" when listening
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys

ID_RE = re.compile(rb"\r\nX-Bench-Id: ([0-9a-z.-]+)\r\n")
MAX_DATA = 64 << 20


class Counts:
    def __init__(self) -> None:
        self.messages = 0
        self.recipients = 0
        self.ids: set[bytes] = set()


async def session(
    counts: Counts, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    writer.write(b"220 sink ESMTP\r\n")
    rcpts = 0
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb == b"RCPT":
                rcpts += 1
                writer.write(b"250 ok\r\n")
            elif verb == b"MAIL":
                rcpts = 0
                writer.write(b"250 ok\r\n")
            elif verb == b"DATA":
                writer.write(b"354 go\r\n")
                data = await reader.readuntil(b"\r\n.\r\n")
                m = ID_RE.search(data)
                if m:
                    counts.ids.add(m.group(1))
                counts.messages += 1
                counts.recipients += rcpts
                writer.write(b"250 accepted\r\n")
            elif verb in (b"EHLO", b"HELO"):
                writer.write(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return
            elif verb == b"XSTA":
                n = (counts.messages, counts.recipients, len(counts.ids))
                writer.write(b"250 %d %d %d\r\n" % n)
            elif verb == b"XRES":
                counts.messages, counts.recipients, counts.ids = 0, 0, set()
                writer.write(b"250 reset\r\n")
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return
    finally:
        writer.close()


async def main(port: int) -> None:
    counts = Counts()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await session(counts, r, w)

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024, limit=MAX_DATA)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    from pyqmail.unix.loop import run

    try:
        run(main(ap.parse_args().port))
    except KeyboardInterrupt:
        sys.exit(0)
