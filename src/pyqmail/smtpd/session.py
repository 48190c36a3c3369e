"""One SMTP session: the engine, the policy and two streams, wired together.

The same loop serves the built-in listener and qmail-smtpd on fd 0/1 under
tcpserver. Replies to pipelined commands are written as they are decided
and flushed when the engine needs more input (RFC 2920).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from pyqmail.proto.smtp import server as eng
from pyqmail.proto.smtp.replies import Reply
from pyqmail.smtpd.policy import SmtpPolicy

READ_BYTES = 65536


class Reader(Protocol):
    async def read(self, n: int) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...


async def serve_smtp(
    reader: Reader,
    writer: Writer,
    policy: SmtpPolicy,
    limits: eng.Limits,
    timeout: float,
) -> None:
    conn = eng.SMTPServer(limits)
    try:
        writer.write(conn.send(policy.greeting()))
        while not conn.closed:
            try:
                event = conn.next_event()
            except eng.RemoteProtocolError as exc:
                if exc.reply is not None:
                    writer.write(exc.reply.to_bytes())
                break
            if event is eng.NEED_DATA:
                await writer.drain()
                try:
                    async with asyncio.timeout(timeout):
                        data = await reader.read(READ_BYTES)
                except TimeoutError:
                    writer.write(Reply(451, "timeout (#4.4.2)").to_bytes())
                    break
                conn.receive_data(data)
                continue
            if isinstance(event, eng.ConnectionClosed):
                await policy.decide(event)
                break
            reply = await policy.decide(event)
            if reply is not None:
                writer.write(conn.send(reply))
        with contextlib.suppress(OSError):
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        policy.reset()
        with contextlib.suppress(OSError):
            writer.close()
