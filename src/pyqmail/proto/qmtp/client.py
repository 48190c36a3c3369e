"""Client side of QMTP and QMQP, sans-IO: packages out, responses in (qmail-protocols §7).

Callers hand over the message in UNIX form (LF line ends, as queued). QMTP
sends it with the LF encoding byte; QMQP sends it bare inside the outer
netstring. ``qmqp_frame`` returns the bytes before and after the message so
a caller can stream the message itself from a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyqmail.formats.netstring import NetstringError, encode
from pyqmail.proto.qmtp.stream import NetstringStream

MAX_RESPONSE_BYTES = 10_000  # qmail-send keeps at most this much of a report


@dataclass(frozen=True, slots=True)
class Response:
    status: str  # "K", "Z" or "D"
    text: bytes  # after the status letter


def qmtp_package(message: bytes, sender: bytes, recipients: Sequence[bytes]) -> bytes:
    """One QMTP package: message (LF encoding), sender, recipient list."""
    rcpts = b"".join(encode(r) for r in recipients)
    return encode(b"\n" + message) + encode(sender) + encode(rcpts)


def qmqp_frame(message_len: int, sender: bytes, recipients: Sequence[bytes]) -> tuple[bytes, bytes]:
    """(prefix, suffix) such that prefix + message + suffix is the QMQP request."""
    after = b"," + encode(sender) + b"".join(encode(r) for r in recipients)
    inner_len = len(b"%d:" % message_len) + message_len + len(after)
    return b"%d:%d:" % (inner_len, message_len), after + b","


class ResponseReader:
    """The server's K/Z/D netstrings, in order; garbage raises NetstringError."""

    def __init__(self) -> None:
        self._stream = NetstringStream()
        self._size: int | None = None
        self._text = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._stream.receive_data(data)

    def next_response(self) -> Response | None:
        """A whole response, or None until one has arrived."""
        s = self._stream
        if self._size is None:
            self._size = s.read_length(MAX_RESPONSE_BYTES)
            if self._size is None:
                return None
            self._text = bytearray()
        if len(self._text) < self._size:
            self._text += s.read_payload(self._size - len(self._text))
            if len(self._text) < self._size:
                return None
        if not s.read_comma():
            return None
        text, self._size = bytes(self._text), None
        status = text[:1].decode("latin-1")
        if status not in ("K", "Z", "D"):
            raise NetstringError(f"response does not start with K, Z or D: {text[:20]!r}")
        return Response(status, text[1:])
