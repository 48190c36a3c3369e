"""POP3 server protocol engine, sans-IO: bytes in, events out.

Theory of operation
-------------------
The caller feeds bytes with receive_data() (b"" at EOF) and pulls events
with next_event(); each command event gets exactly one reply (ok(), err()
or a multi-line answer) before the next line is parsed, so pipelined
commands (RFC 2449 PIPELINING) wait in the buffer and a reply can never
answer the wrong command. After the +OK to STLS, start_tls() throws away
whatever the client sent behind it in plaintext (RFC 2595 §4).

States (RFC 1939 §3): AUTHORIZATION (qmail-popup's part: USER, PASS, APOP,
CAPA, STLS, NOOP, QUIT; anything else "-ERR authorization first"), then
TRANSACTION after authenticated() (qmail-pop3d's part), then CLOSED after
QUIT, EOF or too many errors. The engine parses and sequences; it never
opens a mailbox or checks a password.

Limits: a command line is at most Limits.max_line_bytes (the excess is
dropped as it arrives and the line is refused); message numbers and TOP
counts are at most MAX_NUMBER_DIGITS digits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Final, TypeAlias

MAX_NUMBER_DIGITS = 9


class State(Enum):
    AUTHORIZATION = auto()
    TRANSACTION = auto()
    CLOSED = auto()


@dataclass(frozen=True, slots=True)
class Limits:
    max_line_bytes: int = 1024  # RFC 2449 §4 asks for 255; passwords may be longer
    max_bad_commands: int = 20  # then "-ERR too many errors" and close


@dataclass(frozen=True, slots=True)
class User:
    name: bytes


@dataclass(frozen=True, slots=True)
class Pass:
    user: bytes
    password: bytes


@dataclass(frozen=True, slots=True)
class Apop:
    user: bytes
    digest: bytes


@dataclass(frozen=True, slots=True)
class Capa:
    pass


@dataclass(frozen=True, slots=True)
class Stls:
    pass


@dataclass(frozen=True, slots=True)
class Noop:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Stat:
    pass


@dataclass(frozen=True, slots=True)
class List:
    msg: int | None


@dataclass(frozen=True, slots=True)
class Uidl:
    msg: int | None


@dataclass(frozen=True, slots=True)
class Retr:
    msg: int


@dataclass(frozen=True, slots=True)
class Top:
    msg: int
    lines: int


@dataclass(frozen=True, slots=True)
class Dele:
    msg: int


@dataclass(frozen=True, slots=True)
class Rset:
    pass


@dataclass(frozen=True, slots=True)
class Last:
    pass


@dataclass(frozen=True, slots=True)
class Rejected:
    """A line the engine refused; send ``reply`` (already an -ERR line)."""

    reply: bytes
    close: bool = False  # the limit of bad commands was reached: close after it


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    pass


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()

Event: TypeAlias = (
    User
    | Pass
    | Apop
    | Capa
    | Stls
    | Noop
    | Quit
    | Stat
    | List
    | Uidl
    | Retr
    | Top
    | Dele
    | Rset
    | Last
    | Rejected
    | ConnectionClosed
)


class LocalProtocolError(RuntimeError):
    """The caller broke the order (e.g. two events without a reply)."""


_AUTH_ONLY = frozenset({b"USER", b"PASS", b"APOP", b"STLS"})
_TRANSACTION = frozenset({b"STAT", b"LIST", b"UIDL", b"RETR", b"TOP", b"DELE", b"RSET", b"LAST"})


def _number(arg: bytes) -> int | None:
    if not arg or len(arg) > MAX_NUMBER_DIGITS or not arg.isdigit():
        return None
    return int(arg)


def _err(text: bytes) -> bytes:
    return b"-ERR " + text + b"\r\n"


class POP3Server:
    def __init__(self, limits: Limits | None = None, *, transaction: bool = False) -> None:
        self.limits = limits or Limits()
        self.state = State.TRANSACTION if transaction else State.AUTHORIZATION
        self._buf = b""
        self._discarding = False  # inside an over-long line
        self._eof = False
        self._awaiting_reply = False
        self._user: bytes | None = None
        self._bad = 0

    # -- input -------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if not data:
            self._eof = True
            return
        if self._discarding:
            nl = data.find(b"\n")
            if nl < 0:
                return
            self._discarding = False
            self._buf = b"\0too-long\n" + data[nl + 1 :]  # a marker no client can send
            return
        self._buf += data
        if len(self._buf) > self.limits.max_line_bytes and b"\n" not in self._buf:
            self._buf = b""
            self._discarding = True

    def next_event(self) -> Event | _NeedData:
        if self._awaiting_reply:
            raise LocalProtocolError("reply to the last event first")
        if self.state is State.CLOSED:
            return ConnectionClosed()
        nl = self._buf.find(b"\n")
        if nl < 0:
            if self._eof:
                self.state = State.CLOSED
                return ConnectionClosed()
            return NEED_DATA
        line, self._buf = self._buf[:nl], self._buf[nl + 1 :]
        if line.endswith(b"\r"):
            line = line[:-1]
        self._awaiting_reply = True
        if line == b"\0too-long" or nl + 1 > self.limits.max_line_bytes:
            return self._reject(b"line too long")
        event = self._parse(line)
        if isinstance(event, Rejected):
            return self._reject(event.reply)
        if isinstance(event, Quit):
            self.state = State.CLOSED
        return event

    def _reject(self, text: bytes) -> Rejected:
        self._bad += 1
        if self._bad >= self.limits.max_bad_commands:
            self.state = State.CLOSED
            return Rejected(_err(b"too many errors"), close=True)
        return Rejected(_err(text))

    def _parse(self, line: bytes) -> Event:
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        authorizing = self.state is State.AUTHORIZATION
        if verb == b"QUIT":
            return Quit()
        if verb == b"NOOP":
            return Noop()
        if verb == b"CAPA":
            return Capa()
        if authorizing:
            if verb not in _AUTH_ONLY:
                # qmail-popup's answer to everything it does not know
                return Rejected(b"authorization first")
            if verb == b"USER":
                if not arg:
                    return Rejected(b"USER needs a name")
                self._user = arg
                return User(arg)
            if verb == b"PASS":
                if self._user is None:
                    return Rejected(b"USER first")
                user, self._user = self._user, None
                return Pass(user, arg)
            if verb == b"APOP":
                name, _, digest = arg.partition(b" ")
                if not name or not digest:
                    return Rejected(b"APOP needs a name and a digest")
                return Apop(name, digest)
            return Stls()
        if verb not in _TRANSACTION:
            return Rejected(b"unimplemented")
        args = arg.split(b" ") if arg else []
        if verb == b"STAT":
            return Stat()
        if verb == b"RSET":
            return Rset()
        if verb == b"LAST":
            return Last()
        if verb in (b"LIST", b"UIDL") and not args:
            return List(None) if verb == b"LIST" else Uidl(None)
        want = 2 if verb == b"TOP" else 1
        nums = [_number(a) for a in args]
        if len(nums) != want or any(n is None for n in nums):
            return Rejected(b"syntax error")
        msg = nums[0] or 0
        if verb == b"TOP":
            return Top(msg, nums[1] or 0)
        if verb == b"LIST":
            return List(msg)
        if verb == b"UIDL":
            return Uidl(msg)
        if verb == b"RETR":
            return Retr(msg)
        return Dele(msg)

    # -- output ------------------------------------------------------------

    def _reply(self) -> None:
        self._awaiting_reply = False

    def ok(self, text: bytes = b"") -> bytes:
        self._reply()
        return b"+OK " + text + b"\r\n"

    def err(self, text: bytes) -> bytes:
        self._reply()
        return _err(text)

    def rejected(self, event: Rejected) -> bytes:
        self._reply()
        return event.reply

    def multiline(self, text: bytes, lines: Iterable[bytes]) -> bytes:
        """+OK and short lines (LIST, UIDL, CAPA), dot-stuffed, with the final dot."""
        self._reply()
        body = [b"." + ln if ln.startswith(b".") else ln for ln in lines]
        return b"".join([b"+OK " + text + b"\r\n", *(ln + b"\r\n" for ln in body), b".\r\n"])

    def start_multiline(self, text: bytes = b"") -> bytes:
        """+OK line of a RETR or TOP; the body follows from a Stuffer."""
        self._reply()
        return b"+OK " + text + b"\r\n"

    # -- transitions the caller decides --------------------------------------

    def start_tls(self) -> None:
        """Call right after the +OK to STLS: plaintext sent behind it is void."""
        if self.state is not State.AUTHORIZATION:
            raise LocalProtocolError("STLS outside the AUTHORIZATION state")
        self._buf = b""
        self._discarding = False
        self._user = None

    def pending_input(self) -> bytes:
        """Bytes received but not parsed yet (pipelined behind PASS): for a hand-off."""
        return b"" if self._discarding else self._buf

    def authenticated(self) -> None:
        if self.state is not State.AUTHORIZATION:
            raise LocalProtocolError("already authenticated")
        self.state = State.TRANSACTION

    def close(self) -> None:
        self.state = State.CLOSED
