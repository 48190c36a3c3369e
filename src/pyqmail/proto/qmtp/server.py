"""Server side of QMTP and QMQP, sans-IO: bytes in, events out (qmail-protocols §7).

Theory of operation. Both protocols send a message netstring, a sender
netstring and recipient netstrings; QMTP wraps the recipients in one more
netstring and repeats packages on one connection, QMQP wraps the whole
package in one outer netstring and stops. The engine walks those fields
with one NetstringStream and a small state table. The message is never
held: it leaves as MessageChunk events (CRLF-encoded QMTP messages already
turned into LF form); past max_message_bytes the rest is read and dropped,
and Package says too_big (qmail-qmtpd's databytes: answer D after reading).
Addresses are kept up to MAX_ADDRESS_BYTES and a long one is read and
dropped, marked unacceptable, as qmail-qmtpd does. Anything that is not a
netstring where one is due raises RemoteProtocolError.
"""

from __future__ import annotations

from enum import Enum, auto

from pyqmail.formats.envelope import MAX_ADDRESS_BYTES
from pyqmail.formats.netstring import NetstringError, encode
from pyqmail.proto.qmtp.events import (
    NEED_DATA,
    ConnectionClosed,
    Event,
    MessageChunk,
    MessageStart,
    Package,
    Recipient,
    RemoteProtocolError,
    _NeedData,
)
from pyqmail.proto.qmtp.stream import NetstringStream

MAX_RESPONSE_TEXT = 1000
# Each recipient is owed its own answer, so extra ones cannot just be refused:
# a package with more is dropped unanswered, which the client takes as a
# temporary failure (§7.2) and may retry in smaller packages.
MAX_RECIPIENTS = 10_000


class State(Enum):
    PACKAGE = auto()  # QMQP: the outer length; QMTP: the message length
    MESSAGE_LENGTH = auto()  # QMQP: the message's length inside the outer string
    ENCODING = auto()  # QMTP: the message's first byte, \n or \r
    MESSAGE = auto()
    MESSAGE_COMMA = auto()
    SENDER = auto()
    SENDER_BODY = auto()
    SENDER_COMMA = auto()
    RCPT_LIST = auto()  # QMTP: the recipient list's own length
    RCPT = auto()  # a recipient's length, or the end of the list
    RCPT_BODY = auto()
    RCPT_COMMA = auto()
    LIST_COMMA = auto()  # QMTP: the list's comma; QMQP: the outer comma
    DONE = auto()  # QMQP: one package per connection


class PackageEngine:
    qmtp: bool

    def __init__(self, max_message_bytes: int = 0, max_recipients: int = MAX_RECIPIENTS) -> None:
        self.max_message_bytes = max_message_bytes  # 0: no limit (control/databytes)
        self.max_recipients = max_recipients
        self.stream = NetstringStream()
        self.state = State.PACKAGE
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self._left = 0  # payload bytes still to read in the current field
        self._crlf = False
        self._held_cr = False
        self._size = 0
        self._addr = bytearray()
        self._addr_ok = True
        self._sender = b""
        self._sender_ok = True
        self._rcpts: list[Recipient] = []

    def receive_data(self, data: bytes) -> None:
        """b"" means the peer closed its side."""
        self.stream.receive_data(data)

    def next_event(self) -> Event | _NeedData:
        try:
            return self._step()
        except NetstringError as exc:
            self.closed = True
            raise RemoteProtocolError(str(exc)) from exc

    @staticmethod
    def response(text: bytes) -> bytes:
        """One K/Z/D answer as a netstring (K like SMTP's 250 to DATA)."""
        if text[:1] not in (b"K", b"Z", b"D"):
            raise ValueError(f"a response starts with K, Z or D, not {text[:1]!r}")
        return encode(text[:MAX_RESPONSE_TEXT])

    # -- the state table -------------------------------------------------
    def _need(self) -> _NeedData:
        if self.stream.eof:
            self.closed = True
            raise RemoteProtocolError(f"connection closed in {self.state.name.lower()}")
        return NEED_DATA

    def _message_bytes(self, piece: bytes) -> bytes:
        """Count and, past the limit, drop message bytes in UNIX form."""
        before = self._size
        self._size += len(piece)
        limit = self.max_message_bytes
        if not limit or self._size <= limit:
            return piece
        self._size = min(self._size, limit + 1)  # a count, not a buffer: stop growing
        return piece[: max(0, limit - before)]

    def _step(self) -> Event | _NeedData:
        s = self.stream
        while True:
            st = self.state
            if st is State.DONE:
                return ConnectionClosed()
            if st is State.PACKAGE:
                if not s.buffered and s.eof:
                    self.closed = True
                    return ConnectionClosed()
                size = s.read_length()
                if size is None:
                    return self._need()
                self._reset()
                if self.qmtp:
                    if size == 0:
                        raise NetstringError("empty QMTP message has no encoding byte")
                    self._left = size
                    self.state = State.ENCODING
                else:
                    s.enter(size)
                    self.state = State.MESSAGE_LENGTH
                continue
            if st is State.MESSAGE_LENGTH:
                size = s.read_length()
                if size is None:
                    return self._need()
                self._left = size
                self.state = State.MESSAGE
                return MessageStart()
            if st is State.ENCODING:
                first = s.read_payload(1)
                if not first:
                    return self._need()
                if first not in (b"\n", b"\r"):
                    raise NetstringError("QMTP message encoding is neither LF nor CRLF")
                self._crlf = first == b"\r"
                self._left -= 1
                self.state = State.MESSAGE
                return MessageStart()
            if st is State.MESSAGE:
                if self._left == 0:
                    self.state = State.MESSAGE_COMMA
                    if self._held_cr:
                        self._held_cr = False
                        out = self._message_bytes(b"\r")
                        if out:
                            return MessageChunk(out)
                    continue
                piece = s.read_payload(self._left)
                if not piece:
                    return self._need()
                self._left -= len(piece)
                if self._crlf:
                    piece = self._from_crlf(piece)
                out = self._message_bytes(piece)
                if out:
                    return MessageChunk(out)
                continue
            if st is State.MESSAGE_COMMA:
                if not s.read_comma():
                    return self._need()
                self.state = State.SENDER
                continue
            if st in (State.SENDER, State.RCPT):
                if st is State.RCPT and self._list_done():
                    self.state = State.LIST_COMMA
                    continue
                size = s.read_length()
                if size is None:
                    return self._need()
                self._left = size
                self._addr = bytearray()
                self._addr_ok = size < MAX_ADDRESS_BYTES
                self.state = State.SENDER_BODY if st is State.SENDER else State.RCPT_BODY
                continue
            if st in (State.SENDER_BODY, State.RCPT_BODY):
                if self._left:
                    piece = s.read_payload(self._left)
                    if not piece:
                        return self._need()
                    self._left -= len(piece)
                    if self._addr_ok:
                        self._addr += piece
                    continue
                if b"\0" in self._addr:
                    self._addr_ok = False
                self.state = State.SENDER_COMMA if st is State.SENDER_BODY else State.RCPT_COMMA
                continue
            if st is State.SENDER_COMMA:
                if not s.read_comma():
                    return self._need()
                self._sender, self._sender_ok = bytes(self._addr), self._addr_ok
                self.state = State.RCPT_LIST if self.qmtp else State.RCPT
                continue
            if st is State.RCPT_LIST:
                size = s.read_length()
                if size is None:
                    return self._need()
                s.enter(size)
                self.state = State.RCPT
                continue
            if st is State.RCPT_COMMA:
                if not s.read_comma():
                    return self._need()
                if len(self._rcpts) >= self.max_recipients:
                    raise NetstringError(f"more than {self.max_recipients} recipients")
                self._rcpts.append(Recipient(bytes(self._addr), self._addr_ok))
                self.state = State.RCPT
                continue
            if st is State.LIST_COMMA:
                if not s.read_comma():
                    return self._need()
                self.state = State.PACKAGE if self.qmtp else State.DONE
                return self._package()
            raise AssertionError(st)  # pragma: no cover

    def _list_done(self) -> bool:
        if self.stream.container_left() == 0:
            self.stream.leave()
            return True
        return False

    def _from_crlf(self, piece: bytes) -> bytes:
        """CRLF encoding: CR LF becomes LF, a lone CR stays (qmail-protocols §7.2)."""
        if self._held_cr:
            piece = b"\r" + piece
            self._held_cr = False
        if piece.endswith(b"\r"):
            piece = piece[:-1]
            self._held_cr = True
        return piece.replace(b"\r\n", b"\n")

    def _package(self) -> Package:
        too_big = bool(self.max_message_bytes) and self._size > self.max_message_bytes
        return Package(self._sender, self._sender_ok, tuple(self._rcpts), too_big, self._size)


class QMTPServer(PackageEngine):
    """Several packages per connection; one response per recipient each."""

    qmtp = True


class QMQPServer(PackageEngine):
    """One outer netstring, one response, then the connection is done."""

    qmtp = False
