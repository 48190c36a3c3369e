"""The queue writer's socket protocol: both halves, in one place.

Client -> writer, each a netstring:
  1. header  ``QMQ1\\0<origin>``  origin: network | bounce | local
  2. message bytes in chunks (each non-empty, at most CHUNK_LIMIT)
  3. an empty netstring: end of message
  4. the envelope in qmail-queue's fd-1 form (``F..\\0T..\\0\\0``)
Writer -> client: one netstring ``K<id>`` (queued and fsynced), ``Z<text>``
or ``D<text>``; then the writer closes.

The client half (AsyncSubmission, SyncSubmission, submit_sync) is used by
every injector; the server half (read_origin, read_body, read_envelope,
answer) by the two programs that listen on the socket: the queue writer and
a mini node's QMQP forwarder. What each does with the bytes, and when it may
say K, stays with it.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyqmail.formats import envelope as env_fmt
from pyqmail.formats import netstring
from pyqmail.ipc.frames import MAX_FRAME_BYTES, read_frame

if TYPE_CHECKING:  # imported where used: lspawn's workers never load asyncio
    import asyncio

MAGIC = b"QMQ1"
CHUNK_LIMIT = 1 << 20
ORIGINS = (b"network", b"bounce", b"local")
MAX_MESSAGE_BYTES = 1 << 31
ENVELOPE_LIMIT = 64 << 20
HEADER_LIMIT = 64
CLIENT_TIMEOUT_S = 24 * 3600  # qmail-queue's suicide alarm


@dataclass(frozen=True, slots=True)
class QueueResult:
    status: str  # "K", "Z" or "D"
    text: str
    msg_id: int = 0


def parse_result(payload: bytes | None) -> QueueResult:
    if not payload:
        return QueueResult("Z", "qq crashed (#4.3.0)")
    status, text = payload[:1].decode("latin-1"), payload[1:].decode("utf-8", "replace")
    if status == "K":
        return QueueResult("K", "ok", int(text) if text.isdigit() else 0)
    if status in ("Z", "D"):
        return QueueResult(status, text)
    return QueueResult("Z", "qq internal bug (#4.3.0)")


def _chunks(data: bytes) -> list[bytes]:
    return [netstring.encode(data[i : i + CHUNK_LIMIT]) for i in range(0, len(data), CHUNK_LIMIT)]


class AsyncSubmission:
    """Stream one message to the writer from an asyncio program."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, path: str, origin: bytes) -> AsyncSubmission:
        import asyncio

        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(netstring.encode(MAGIC + b"\0" + origin))
        return cls(reader, writer)

    async def write(self, data: bytes) -> None:
        if data:
            for piece in _chunks(data):
                self._writer.write(piece)
            await self._writer.drain()

    async def finish(self, envelope_wire: bytes) -> QueueResult:
        import asyncio

        try:
            self._writer.write(b"0:," + netstring.encode(envelope_wire))
            await self._writer.drain()
            return parse_result(await read_frame(self._reader, MAX_FRAME_BYTES))
        except (OSError, asyncio.IncompleteReadError, netstring.NetstringError):
            return QueueResult("Z", "qq crashed (#4.3.0)")
        finally:
            self.abort()

    def abort(self) -> None:
        self._writer.close()


def submit_sync(
    path: str, origin: bytes, message: bytes, envelope_wire: bytes, timeout: float = 600.0
) -> QueueResult:
    """Blocking one-shot submission (qmail-queue program, forwards, bounces)."""
    try:
        sub = SyncSubmission.open(path, origin, timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        return QueueResult("Z", "qq unable to reach the queue writer (#4.3.0)")
    except OSError:
        return QueueResult("Z", "qq crashed (#4.3.0)")
    sub.write(message)
    return sub.finish(envelope_wire)


class SyncSubmission:
    """Stream one message to the writer from a blocking program (qmail-inject).

    open() raises OSError when the writer cannot be reached; after that every
    failure becomes the Z result finish() returns, as with qmail-queue.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._failed = False

    @classmethod
    def open(cls, path: str, origin: bytes, timeout: float = 600.0) -> SyncSubmission:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            sock.sendall(netstring.encode(MAGIC + b"\0" + origin))
        except OSError:
            sock.close()
            raise
        return cls(sock)

    def write(self, data: bytes) -> None:
        if data and not self._failed:
            try:
                self._sock.sendall(b"".join(_chunks(data)))
            except OSError:
                self._failed = True  # the writer's answer (or its absence) says why

    def finish(self, envelope_wire: bytes) -> QueueResult:
        try:
            if not self._failed:
                self._sock.sendall(b"0:," + netstring.encode(envelope_wire))
            buf = b""
            while True:
                got = netstring.decode_one(buf, limit=MAX_FRAME_BYTES)
                if got is not None:
                    return parse_result(got[0])
                data = self._sock.recv(4096)
                if not data:
                    return parse_result(None)
                buf += data
        except (OSError, netstring.NetstringError):
            return QueueResult("Z", "qq crashed (#4.3.0)")
        finally:
            self._sock.close()


# -- server side ---------------------------------------------------------


class QueueFailure(Exception):
    """Refuse the message with ``Z<text>`` or ``D<text>``."""

    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text

    @property
    def reply(self) -> bytes:
        return self.status.encode() + self.text.encode()


async def read_origin(reader: asyncio.StreamReader) -> bytes:
    """The header frame; returns the origin the client claims (one of ORIGINS)."""
    header = await read_frame(reader, HEADER_LIMIT)
    if header is None or not header.startswith(MAGIC + b"\0"):
        raise QueueFailure("Z", "qq internal bug (#4.3.0)")
    origin = header[len(MAGIC) + 1 :]
    if origin not in ORIGINS:
        raise QueueFailure("Z", "qq internal bug (#4.3.0)")
    return origin


async def read_body(
    reader: asyncio.StreamReader,
    write: Callable[[bytes], object],
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> int:
    """Pass each chunk to ``write`` up to the empty end frame; returns the size."""
    size = 0
    while True:
        chunk = await read_frame(reader, CHUNK_LIMIT)
        if chunk is None:
            raise QueueFailure("Z", "qq read error (#4.3.0)")
        if not chunk:
            return size
        size += len(chunk)
        if size > max_bytes:
            raise QueueFailure("D", "qq permanent problem (#5.3.0)")
        write(chunk)


async def read_envelope(reader: asyncio.StreamReader) -> env_fmt.Envelope:
    """The envelope frame, parsed strictly; errors map as qmail-queue's exit codes."""
    wire = await read_frame(reader, ENVELOPE_LIMIT)
    if wire is None:
        raise QueueFailure("Z", "qq read error (#4.3.0)")
    try:
        return env_fmt.parse_wire(wire)
    except env_fmt.EnvelopeError as exc:
        status = "D" if 11 <= exc.code <= 40 else "Z"
        text = (
            "envelope address too long for qq (#5.1.3)"
            if exc.code == 11
            else "qq read error (#4.3.0)"
            if exc.code == 54
            else "qq internal bug (#4.3.0)"
        )
        raise QueueFailure(status, text) from exc


async def answer(writer: asyncio.StreamWriter, receive: Awaitable[bytes]) -> None:
    """Await ``receive`` (which yields ``K<id>``), answer the client, close.

    Any failure to read the client, or the client's silence for a day,
    becomes a Z; QueueFailure carries its own reply.
    """
    import asyncio

    try:
        async with asyncio.timeout(CLIENT_TIMEOUT_S):
            reply = await receive
    except QueueFailure as exc:
        reply = exc.reply
    except (TimeoutError, asyncio.IncompleteReadError, OSError, netstring.NetstringError):
        reply = b"Zqq read error (#4.3.0)"
    with contextlib.suppress(OSError):
        writer.write(netstring.encode(reply))
        await writer.drain()
        writer.close()
