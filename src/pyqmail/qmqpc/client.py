"""Hand one message to the first QMQP server that answers (qmail-qmqpc's doit).

Servers are tried in control/qmqpservers order. A connection that cannot
be made, or a Z (the server did not take the message), moves on to the next
one; qmail-qmqpc stops at a Z, but a Z promises nothing was queued, so
trying the rest of the pool cannot duplicate mail. K and D are final, and so
is a conversation that broke after the message was sent: a retry elsewhere
could deliver it twice. Results carry qmail-queue's exit codes
(qmail-protocols §1.1): 0 K, 31 D, 71 Z, 72/73 no connection, 74 the
conversation failed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pyqmail.formats.netstring import NetstringError
from pyqmail.proto.qmtp.client import ResponseReader, qmqp_frame

CONNECT_TIMEOUT_S = 10.0  # qmail-qmqpc's timeoutconn
IO_TIMEOUT_S = 60.0  # and its per read/write timeout
PIECE_BYTES = 65536


class Spool(Protocol):
    """A file holding the message (BytesIO, SpooledTemporaryFile...)."""

    def read(self, n: int = -1, /) -> bytes: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...
    def tell(self) -> int: ...


@dataclass(frozen=True, slots=True)
class QmqpResult:
    code: int  # qmail-queue exit code
    text: str  # qmail's text for the code, or the server's own answer
    server: str = ""


NO_SERVERS = QmqpResult(55, "qq unable to read configuration (#4.3.0)")


def _server_text(default: str, text: bytes) -> str:
    said = text.decode("utf-8", "replace").strip()
    return said or default


async def _exchange(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    message: Spool,
    size: int,
    sender: bytes,
    recipients: Sequence[bytes],
    io_timeout: float,
) -> QmqpResult:
    prefix, suffix = qmqp_frame(size, sender, recipients)
    async with asyncio.timeout(io_timeout):
        writer.write(prefix)
        await writer.drain()
    sent = 0
    while sent < size:
        piece = message.read(min(PIECE_BYTES, size - sent))
        if not piece:
            return QmqpResult(54, "qq read error (#4.3.0)")
        sent += len(piece)
        async with asyncio.timeout(io_timeout):
            writer.write(piece)
            await writer.drain()
    async with asyncio.timeout(io_timeout):
        writer.write(suffix)
        await writer.drain()
    responses = ResponseReader()
    while True:
        async with asyncio.timeout(io_timeout):
            data = await reader.read(4096)
        if not data:
            return QmqpResult(74, "communication with mail server failed (#4.4.2)")
        responses.receive_data(data)
        got = responses.next_response()
        if got is None:
            continue
        if got.status == "K":
            return QmqpResult(0, _server_text("ok", got.text))
        if got.status == "Z":
            return QmqpResult(
                71, _server_text("mail server temporarily rejected message (#4.3.0)", got.text)
            )
        return QmqpResult(
            31, _server_text("mail server permanently rejected message (#5.3.0)", got.text)
        )


async def send_qmqp(
    servers: Sequence[tuple[str, int]],
    message: Spool,
    size: int,
    sender: bytes,
    recipients: Sequence[bytes],
    *,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    io_timeout: float = IO_TIMEOUT_S,
) -> QmqpResult:
    """The message is read from the file's current position, size bytes."""
    result = NO_SERVERS
    start = message.tell()
    for host, port in servers:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection(host, port)
        except (TimeoutError, OSError) as exc:
            if result.code != 71:  # a server's own Z says more than a dead one
                result = (
                    QmqpResult(72, "connection to mail server timed out (#4.4.1)", where)
                    if isinstance(exc, TimeoutError)
                    else QmqpResult(73, "connection to mail server rejected (#4.4.1)", where)
                )
            continue
        try:
            message.seek(start)
            got = await _exchange(reader, writer, message, size, sender, recipients, io_timeout)
            result = QmqpResult(got.code, got.text, where)
            if got.code != 71:
                return result
        except (TimeoutError, OSError, NetstringError):
            return QmqpResult(74, "communication with mail server failed (#4.4.2)", where)
        finally:
            with contextlib.suppress(OSError):
                writer.close()
    return result
