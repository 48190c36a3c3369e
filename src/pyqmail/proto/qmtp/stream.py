"""A netstring stream: lengths, payload pieces and commas, bounded (qmail-protocols §7.1).

Both QMTP and QMQP, server and client, read their peer through this one
parser. It never holds a payload itself: callers take pieces of at most
what is buffered, so a message of any declared size costs no memory beyond
one read. Netstrings may nest (QMQP's outer string, QMTP's recipient list):
``enter`` opens a container whose declared length every inner byte is
charged against, so an inner netstring can never run past its container.
"""

from __future__ import annotations

from pyqmail.formats.netstring import NetstringError, parse_length

# 2**40 bytes: wider than any message we take, narrow enough that the length
# field is at most 13 digits long before it is refused
MAX_LENGTH = 1 << 40


class NetstringStream:
    """Feed bytes with receive_data; read_length / read_payload / read_comma
    return None (or b"") while more bytes are needed and raise NetstringError
    as soon as the stream can never be valid."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._containers: list[int] = []  # bytes left in each open container
        self.eof = False

    def receive_data(self, data: bytes) -> None:
        """b"" means the peer closed its side."""
        if not data:
            self.eof = True
        else:
            self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _consume(self, n: int) -> bytes:
        if self._containers and n > self._containers[-1]:
            raise NetstringError("netstring runs past its container")
        for i in range(len(self._containers)):
            self._containers[i] -= n
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def read_length(self, limit: int = MAX_LENGTH) -> int | None:
        """The next length field, consumed; None until its colon arrives."""
        got = parse_length(self._buf, limit=limit)
        if got is None:
            if self._containers and len(self._buf) >= self._containers[-1]:
                raise NetstringError("length field runs past its container")
            return None
        size, start = got
        self._consume(start)
        if self._containers and size + 1 > self._containers[-1]:
            raise NetstringError("netstring runs past its container")
        return size

    def read_payload(self, wanted: int) -> bytes:
        """Up to wanted payload bytes that have arrived (maybe b"")."""
        return self._consume(min(wanted, len(self._buf)))

    def read_comma(self) -> bool:
        """True once the closing comma is consumed; False while it has not arrived."""
        if not self._buf:
            return False
        if self._buf[0] != ord(","):
            raise NetstringError("missing comma")
        self._consume(1)
        return True

    def enter(self, size: int) -> None:
        """The payload of the netstring just read holds netstrings itself."""
        self._containers.append(size)

    def container_left(self) -> int:
        return self._containers[-1]

    def leave(self) -> None:
        if self._containers.pop() != 0:
            raise NetstringError("container not used up")  # pragma: no cover - callers check
