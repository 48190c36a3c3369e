"""One QMTP or QMQP connection: the engine, the policy and two streams.

The same loop serves the built-in listeners and qmail-qmtpd / qmail-qmqpd
on fd 0/1 under tcpserver. It returns qmail's exit code: 0 when the peer
closed between packages (or QMQP's one answer was sent), 100 on a protocol
violation (the connection is dropped), 111 on a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from pyqmail.net.streams import READ_BYTES, Reader, Writer
from pyqmail.proto.qmtp.events import (
    NEED_DATA,
    ConnectionClosed,
    MessageChunk,
    MessageStart,
    Package,
    RemoteProtocolError,
)
from pyqmail.proto.qmtp.server import QMQPServer, QMTPServer
from pyqmail.qmtpd.policy import PackagePolicy

MAX_MESSAGE_BYTES = 1 << 31  # the queue writer refuses larger messages
CONNECTION_S = 3600  # qmail-qmtpd's alarm: a connection lasts at most an hour (§7.2)


async def serve_packages(
    reader: Reader, writer: Writer, policy: PackagePolicy, timeout: float
) -> int:
    qmtp = policy.protocol == "QMTP"
    # without databytes the queue writer's own limit still holds; refusing
    # past it here gives the D as a size refusal instead of a broken stream
    engine = (QMTPServer if qmtp else QMQPServer)(policy.databytes or MAX_MESSAGE_BYTES)
    deadline = time.monotonic() + CONNECTION_S
    try:
        while True:
            try:
                event = engine.next_event()
            except RemoteProtocolError:
                return 100
            if event is NEED_DATA:
                await writer.drain()
                wait = min(timeout, deadline - time.monotonic())
                try:
                    async with asyncio.timeout(max(wait, 0.001)):
                        data = await reader.read(READ_BYTES)
                except TimeoutError:
                    return 111
                engine.receive_data(data)
            elif isinstance(event, MessageStart):
                await policy.start()
            elif isinstance(event, MessageChunk):
                await policy.chunk(event.data)
            elif isinstance(event, Package):
                for text in await policy.package(event):
                    writer.write(engine.response(text))
                await writer.drain()
                if not qmtp:
                    return 0
            elif isinstance(event, ConnectionClosed):
                return 0
    except (ConnectionError, OSError):
        return 111
    finally:
        policy.abort()
        with contextlib.suppress(OSError):
            writer.close()
