"""Framed records between our own processes: netstrings on Unix stream sockets.

A frame's payload is a tuple of fields joined by NUL. Nothing trusts a peer:
every frame is bounded by ``limit`` before it is allocated.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from pyqmail.formats import netstring

if TYPE_CHECKING:  # asyncio costs a process ~9 MB; lspawn and clean never load it
    import asyncio

MAX_FRAME_BYTES = 1 << 20
READ_BYTES = 65536


def pack(*fields: bytes) -> bytes:
    return netstring.encode(b"\0".join(fields))


class FrameBuffer:
    """Incremental decoder: feed bytes, take whole payloads."""

    def __init__(self, limit: int = MAX_FRAME_BYTES) -> None:
        self._buf = b""
        self._limit = limit

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        pos = 0  # an offset, not slicing the rest off per frame: many small frames stay linear
        while (got := netstring.frame_at(buf, pos, limit=self._limit)) is not None:
            start, end = got
            out.append(buf[start:end])
            pos = end + 1
        self._buf = buf[pos:] if pos else buf
        return out


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME_BYTES) -> bytes | None:
    """One netstring payload from a stream; None at a clean EOF between frames."""
    import asyncio

    try:
        head = await reader.readuntil(b":")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise netstring.NetstringError("EOF inside length field") from exc
        return None
    except asyncio.LimitOverrunError as exc:
        raise netstring.NetstringError("bad length field") from exc
    head = head[:-1]
    if len(head) > len(str(limit)) or not head.isdigit():
        raise netstring.NetstringError("bad length field")
    if not head or (len(head) > 1 and head.startswith(b"0")):
        raise netstring.NetstringError("bad length field")
    size = int(head)
    if size > limit:
        raise netstring.NetstringError(f"frame of {size} bytes over limit {limit}")
    data = await reader.readexactly(size + 1)
    if data[-1:] != b",":
        raise netstring.NetstringError("missing comma")
    return data[:-1]


def peer_uid_pid(sock: socket.socket) -> tuple[int, int]:
    """SO_PEERCRED of a Unix socket: (uid, pid) of the process at the other end."""
    import struct

    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return uid, pid
