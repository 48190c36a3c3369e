"""SMTP server protocol engine, sans-IO: bytes in, events out.

Theory of operation
-------------------
The caller feeds bytes with receive_data() (b"" at EOF) and pulls events
with next_event(). Every command event must be answered with send()
before the next event is parsed: the reply decides how the following
bytes are read (354 starts DATA, 334 makes the next line an AUTH
response, 220 to STARTTLS throws away everything buffered). So
pipelined commands (RFC 2920) wait in the buffer, never in a queue of
parsed events, and a reply can never apply to the wrong command.

Input modes (State): COMMAND and AUTH read lines, DATA reads a dot-stuffed
body up to CRLF.CRLF, BDAT reads an exact byte count (RFC 3030). Buffers
are bounded: a command line by Limits.max_line_bytes (excess dropped as
it arrives), a body by streaming it out as DataChunk events of at most
MAX_CHUNK_BYTES, holding back at most the 3 bytes a decision needs.

Errors: a peer mistake we can answer is a Rejected event; one we cannot
(too many bad commands, a BDAT size we cannot skip) raises
RemoteProtocolError, after which send() takes one last reply and the
engine is closed. LocalProtocolError means the caller broke the order.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto
from typing import Final, NoReturn, TypeAlias

from pyqmail.proto.smtp import replies
from pyqmail.proto.smtp.commands import CommandSyntaxError, Params, parse_params, split_path
from pyqmail.proto.smtp.replies import Reply

MAX_CHUNK_BYTES = 65536  # largest DataChunk; also the most body input scanned per event
MAX_BDAT_DIGITS = 18  # a BDAT size we can count down; longer cannot be skipped

_CR = 0x0D
_LF = 0x0A
_DOT = 0x2E


class State(Enum):
    GREETING = auto()  # the caller has not sent the 220 greeting yet
    COMMAND = auto()  # reading command lines
    AUTH = auto()  # the next line answers a 334 challenge (RFC 4954 §4)
    DATA = auto()  # reading a dot-stuffed body up to CRLF.CRLF (RFC 5321 §4.5.2)
    BDAT = auto()  # reading a chunk of known size (RFC 3030)
    DISCARD = auto()  # input ignored; our last reply is due, then CLOSED
    CLOSED = auto()


@dataclass(frozen=True, slots=True)
class Limits:
    max_line_bytes: int = 2048  # command line including CRLF
    max_message_bytes: int = 0  # 0 = unlimited; counted as stored (LF ends, unstuffed)
    max_recipients: int = 1000  # accepted RCPTs per transaction
    max_bad_commands: int = 20  # Rejected/Unknown events before 421 and close
    max_address_bytes: int = 900  # qmail: 555 syntax error (#5.5.4) above this
    max_hops: int = 100  # for the policy: 554 when EndOfData.hops >= this
    max_auth_line_bytes: int = 12288  # RFC 4954 §4: AUTH lines may be this long


# Events. Each command event needs exactly one send(); DataChunk, Bdat and
# ConnectionClosed need none.


@dataclass(frozen=True, slots=True)
class Helo:
    name: bytes
    extended: bool  # EHLO


@dataclass(frozen=True, slots=True)
class Mail:
    address: bytes  # b"" for the null sender <>
    params: Params


@dataclass(frozen=True, slots=True)
class Rcpt:
    address: bytes
    params: Params


@dataclass(frozen=True, slots=True)
class Data:
    pass


@dataclass(frozen=True, slots=True)
class DataChunk:
    data: bytes  # message bytes, LF line ends, dots unstuffed; split anywhere


@dataclass(frozen=True, slots=True)
class EndOfData:
    size: int  # whole message as it would be stored, emitted or not
    too_big: bool  # size went over Limits.max_message_bytes; chunks stopped there
    hops: int  # Received:/Delivered-To: header lines


@dataclass(frozen=True, slots=True)
class BareLineFeed:
    pass


@dataclass(frozen=True, slots=True)
class Bdat:
    size: int
    last: bool


@dataclass(frozen=True, slots=True)
class BdatEnd:
    last: bool
    size: int  # cumulative over the transaction's chunks
    too_big: bool
    hops: int


@dataclass(frozen=True, slots=True)
class Rset:
    pass


@dataclass(frozen=True, slots=True)
class Noop:
    pass


@dataclass(frozen=True, slots=True)
class Quit:
    pass


@dataclass(frozen=True, slots=True)
class Vrfy:
    arg: bytes


@dataclass(frozen=True, slots=True)
class Help:
    pass


@dataclass(frozen=True, slots=True)
class StartTls:
    pass


@dataclass(frozen=True, slots=True)
class Auth:
    mechanism: bytes  # uppercased
    initial: bytes | None  # raw initial response as sent ("=" means empty)


@dataclass(frozen=True, slots=True)
class AuthLine:
    line: bytes  # without CRLF; "*" cancels (RFC 4954 §4)


@dataclass(frozen=True, slots=True)
class Unknown:
    verb: bytes  # uppercased


@dataclass(frozen=True, slots=True)
class Rejected:
    reply: Reply  # what the engine suggests answering


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    pass


Event: TypeAlias = (
    Helo
    | Mail
    | Rcpt
    | Data
    | DataChunk
    | EndOfData
    | BareLineFeed
    | Bdat
    | BdatEnd
    | Rset
    | Noop
    | Quit
    | Vrfy
    | Help
    | StartTls
    | Auth
    | AuthLine
    | Unknown
    | Rejected
    | ConnectionClosed
)

_NO_REPLY: Final = frozenset({DataChunk, Bdat, ConnectionClosed})


class NeedData(Enum):
    """Returned by next_event() when more bytes are needed."""

    NEED_DATA = auto()


NEED_DATA: Final = NeedData.NEED_DATA


class RemoteProtocolError(Exception):
    """The peer broke the protocol beyond repair: send `reply` if any, then close."""

    def __init__(self, reply: Reply | None) -> None:
        super().__init__("peer error" if reply is None else f"{reply.code} {reply.text}")
        self.reply = reply


class LocalProtocolError(Exception):
    """The caller used the engine out of order (our bug)."""


_HOP_LINE = re.compile(rb"^(?:received|delivered)", re.IGNORECASE | re.MULTILINE)


class _HopCounter:
    """Count Received/Delivered header lines in a stream split anywhere.

    qmail-smtpd: in the header (up to the first empty line), a line whose
    first 8 bytes are "received" or first 9 "delivered", any case, with or
    without the colon, is a hop. Whole lines are matched in bulk; of an
    unfinished line only the first 9 bytes are kept.
    """

    __slots__ = ("hops", "in_header", "prefix")

    def __init__(self) -> None:
        self.hops = 0
        self.in_header = True
        self.prefix = bytearray()  # start of the unfinished line; empty at a line start

    def feed(self, data: bytes) -> None:
        if not self.in_header:
            return
        start = 0
        if self.prefix:
            nl = data.find(b"\n")
            self._extend(data if nl < 0 else data[:nl])
            if nl < 0:
                return
            self.prefix.clear()
            start = nl + 1
        if data[start : start + 1] == b"\n":
            self.in_header = False  # empty line: the body starts
            return
        blank = data.find(b"\n\n", start)
        if blank >= 0:
            self.in_header = False
            self.hops += len(_HOP_LINE.findall(data, start, blank + 1))
            return
        last_lf = data.rfind(b"\n", start)
        if last_lf >= 0:
            self.hops += len(_HOP_LINE.findall(data, start, last_lf + 1))
            start = last_lf + 1
        self._extend(data[start:])

    def _extend(self, part: bytes) -> None:
        before = len(self.prefix)
        if before >= 9 or not part:
            return
        self.prefix += part[: 9 - before]
        after = len(self.prefix)
        if before < 8 <= after and self.prefix[:8].lower() == b"received":
            self.hops += 1
        if after == 9 and self.prefix.lower() == b"delivered":
            self.hops += 1


class _Body:
    """Size, size limit and hop count of the message being received."""

    __slots__ = ("held_cr", "hops", "max_bytes", "size", "too_big")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.too_big = False
        self.hops = _HopCounter()
        self.held_cr = False  # BDAT: a CR ended the last chunk

    def accept(self, data: bytes) -> bytes:
        """Account for data; return what may be emitted (nothing once too big)."""
        self.hops.feed(data)
        self.size += len(data)
        if self.max_bytes and self.size > self.max_bytes:
            self.too_big = True  # qmail reads on and answers 552 after the end
        return b"" if self.too_big else data

    def from_bdat(self, raw: bytes) -> bytes:
        """CRLF -> LF in a BDAT chunk; a CR ending a chunk waits for the next one."""
        if self.held_cr:
            raw = b"\r" + raw
        self.held_cr = raw.endswith(b"\r")
        if self.held_cr:
            raw = raw[:-1]
        return raw.replace(b"\r\n", b"\n")


class _TooLong(Enum):
    TOO_LONG = auto()


class _Stop(Enum):
    WAIT = auto()  # need more bytes
    FULL = auto()  # scanned MAX_CHUNK_BYTES; more are buffered
    END = auto()  # CRLF.CRLF seen
    BARE_LF = auto()


class SMTPServer:
    """One SMTP server connection, without I/O. See the module docstring."""

    def __init__(self, limits: Limits = Limits()) -> None:
        self._limits = limits
        self._state = State.GREETING
        self._buf = bytearray()
        self._eof = False
        self._queue: deque[Event] = deque()
        self._awaiting: Event | None = None
        self._error: RemoteProtocolError | None = None
        self._bad_commands = 0
        self._skipping_long_line = False
        self._helo: bytes | None = None
        self._esmtp = False
        self._tls = False
        self._authenticated = False
        # Mail transaction (RFC 5321 §3.3).
        self._mail = False
        self._rcpts = 0
        self._bdat_used = False
        self._body: _Body | None = None
        # Body readers.
        self._line_start = True
        self._bdat_left = 0
        self._bdat_last = False
        self._bdat_reject: Reply | None = None

    # -- what the policy may look at ------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def closed(self) -> bool:
        return self._state is State.CLOSED

    @property
    def helo(self) -> bytes | None:
        """The accepted HELO/EHLO name; None before one (or after STARTTLS)."""
        return self._helo

    @property
    def esmtp(self) -> bool:
        return self._esmtp

    @property
    def tls_active(self) -> bool:
        return self._tls

    @property
    def authenticated(self) -> bool:
        return self._authenticated

    @property
    def recipients(self) -> int:
        """Accepted recipients in the current transaction."""
        return self._rcpts

    # -- input ----------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; b"" means the peer closed its side."""
        if self._state in (State.DISCARD, State.CLOSED):
            return  # we are hanging up; late bytes mean nothing
        if self._eof:
            if data:
                raise LocalProtocolError("receive_data() after EOF")
            return
        if not data:
            self._eof = True
        elif self._skipping_long_line and self._state in (State.COMMAND, State.AUTH):
            # Keep only what may end the over-long line: the buffer stays bounded.
            nl = data.find(b"\n")
            if nl < 0:
                return
            self._skipping_long_line = False
            self._buf += data[nl + 1 :]
            self._queue.append(Rejected(replies.LINE_TOO_LONG))
        else:
            self._buf += data

    def next_event(self) -> Event | NeedData:
        """The next event, or NEED_DATA. Raises RemoteProtocolError, LocalProtocolError."""
        if self._state is State.GREETING:
            raise LocalProtocolError("send() the greeting first")
        if self._error is not None:
            raise self._error
        if self._state is State.CLOSED:
            raise LocalProtocolError("connection is closed")
        if self._awaiting is not None:
            raise LocalProtocolError(f"{type(self._awaiting).__name__} awaits a reply")
        if self._queue:
            return self._emit(self._queue.popleft())
        if self._state is State.DISCARD:
            return NEED_DATA
        if self._state is State.DATA:
            event = self._data_event()
        elif self._state is State.BDAT:
            event = self._bdat_event()
        else:
            event = self._line_event()
        if event is NEED_DATA:
            return NEED_DATA
        return self._emit(event)

    def _emit(self, event: Event) -> Event:
        kind = type(event)  # events are final classes: their type is the whole test
        if kind is Unknown or (
            # 452 for recipient 1001 is the client's cue to send the rest in
            # a new transaction (RFC 5321 §4.5.3.1.10), not misbehaviour.
            isinstance(event, Rejected) and event.reply is not replies.TOO_MANY_RCPTS
        ):
            self._bad_commands += 1
            if self._bad_commands > self._limits.max_bad_commands:
                self._fail(replies.TOO_MANY_ERRORS)
        if kind is ConnectionClosed:
            self._state = State.CLOSED
        elif kind not in _NO_REPLY:
            self._awaiting = event
        return event

    def _fail(self, reply: Reply) -> NoReturn:
        self._error = RemoteProtocolError(reply)
        self._state = State.DISCARD
        self._buf.clear()
        raise self._error

    # -- command lines --------------------------------------------------

    def _read_line(self) -> bytes | _TooLong | None:
        """One line without its LF (and a CR before it); None until complete.

        qmail: a line ends at LF, a CR before it is dropped (§9.1). A line
        over the limit is TOO_LONG once its LF arrives; until then the
        excess is dropped as it comes, so the buffer never exceeds the limit.
        """
        buf = self._buf
        auth = self._state is State.AUTH or buf[:5].upper() == b"AUTH "
        limit = self._limits.max_auth_line_bytes if auth else self._limits.max_line_bytes
        nl = buf.find(b"\n", 0, limit)
        if nl < 0:
            if len(buf) < limit:
                return None
            nl = buf.find(b"\n", limit)
            if nl < 0:
                buf.clear()
                self._skipping_long_line = True  # receive_data() drops up to the LF
                return None
            del buf[: nl + 1]
            return _TooLong.TOO_LONG
        line = bytes(buf[:nl])
        del buf[: nl + 1]
        return line[:-1] if line.endswith(b"\r") else line

    def _line_event(self) -> Event | NeedData:
        line = self._read_line()
        if line is None:
            if self._eof:
                self._buf.clear()  # an unfinished line at EOF is not a command
                self._skipping_long_line = False
                return ConnectionClosed()
            return NEED_DATA
        if line is _TooLong.TOO_LONG:
            return Rejected(replies.LINE_TOO_LONG)
        if self._state is State.AUTH:
            return AuthLine(line)
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()  # verbs are case-insensitive (RFC 5321 §2.4)
        arg = arg.lstrip(b" ")
        handler = self._COMMANDS.get(verb)
        if handler is None:
            return Unknown(verb)
        return handler(self, arg)

    def _helo_command(self, arg: bytes, *, extended: bool) -> Event:
        name = arg.strip(b" ")
        if not name:
            return Rejected(replies.HELO_ARGUMENT)
        return Helo(name, extended)

    def _cmd_helo(self, arg: bytes) -> Event:
        return self._helo_command(arg, extended=False)

    def _cmd_ehlo(self, arg: bytes) -> Event:
        return self._helo_command(arg, extended=True)

    def _path_and_params(self, arg: bytes, prefix: bytes) -> tuple[bytes, Params] | Reply:
        # Stricter than qmail, which takes "MAIL <a@b>" too: the keyword and
        # an argument are required (RFC 5321 §4.1.1.2, §4.1.1.3).
        if arg[: len(prefix)].upper() != prefix or not arg[len(prefix) :].strip(b" "):
            return replies.MAIL_SYNTAX if prefix == b"FROM:" else replies.RCPT_SYNTAX
        try:
            address, rest = split_path(arg[len(prefix) :], max_len=self._limits.max_address_bytes)
            return address, parse_params(rest)
        except CommandSyntaxError as e:
            return e.reply

    def _cmd_mail(self, arg: bytes) -> Event:
        # qmail allows MAIL before HELO and inside a transaction (it replaces it).
        parsed = self._path_and_params(arg, b"FROM:")
        if isinstance(parsed, Reply):
            return Rejected(parsed)
        return Mail(*parsed)

    def _cmd_rcpt(self, arg: bytes) -> Event:
        if not self._mail:
            return Rejected(replies.MAIL_FIRST)
        parsed = self._path_and_params(arg, b"TO:")
        if isinstance(parsed, Reply):
            return Rejected(parsed)
        if not parsed[0]:
            return Rejected(replies.EMPTY_RECIPIENT)  # qmail 1.02 relayed ""@host
        if self._rcpts >= self._limits.max_recipients:
            return Rejected(replies.TOO_MANY_RCPTS)
        return Rcpt(*parsed)

    def _cmd_data(self, arg: bytes) -> Event:
        if not self._mail:
            return Rejected(replies.MAIL_FIRST)
        if not self._rcpts:
            return Rejected(replies.RCPT_FIRST)
        if self._bdat_used:
            return Rejected(replies.DATA_AFTER_BDAT)  # RFC 3030 §2
        return Data()

    def _cmd_bdat(self, arg: bytes) -> Event | NeedData:
        words = arg.split()
        if not words or not words[0].isdigit() or len(words[0]) > MAX_BDAT_DIGITS:
            # Without a size we cannot find the next command: give up.
            self._fail(replies.BDAT_SYNTAX)
        size = int(words[0])
        last = [w.upper() for w in words[1:]] == [b"LAST"]
        problem: Reply | None = None
        if len(words) > 1 and not last:
            problem = replies.SYNTAX_ERROR
        elif not self._mail:
            problem = replies.MAIL_FIRST
        elif not self._rcpts:
            problem = replies.RCPT_FIRST
        self._state = State.BDAT
        self._bdat_left = size
        self._bdat_last = last
        if problem is not None:
            # RFC 3030 §2: the chunk is read and thrown away, the transaction
            # has failed, later chunks in the pipeline are refused the same way.
            self._reset_transaction()
            self._bdat_reject = problem
            return self._bdat_event()
        self._bdat_used = True
        if self._body is None:
            self._body = _Body(self._limits.max_message_bytes)
        return Bdat(size, last)

    def _cmd_rset(self, arg: bytes) -> Event:
        return Rset()

    def _cmd_noop(self, arg: bytes) -> Event:
        return Noop()

    def _cmd_quit(self, arg: bytes) -> Event:
        return Quit()

    def _cmd_vrfy(self, arg: bytes) -> Event:
        return Vrfy(arg)

    def _cmd_help(self, arg: bytes) -> Event:
        return Help()

    def _cmd_starttls(self, arg: bytes) -> Event:
        if arg.strip(b" "):
            return Rejected(replies.SYNTAX_ERROR)  # RFC 3207 §4: no parameters
        if self._tls:
            return Rejected(replies.TLS_ACTIVE)
        return StartTls()

    def _cmd_auth(self, arg: bytes) -> Event:
        # RFC 4954 §4: once only, never inside a mail transaction.
        if self._authenticated:
            return Rejected(replies.AUTH_ALREADY)
        if self._mail:
            return Rejected(replies.AUTH_IN_TRANSACTION)
        words = arg.split()
        if not 1 <= len(words) <= 2:
            return Rejected(replies.SYNTAX_ERROR)
        return Auth(words[0].upper(), words[1] if len(words) == 2 else None)

    _COMMANDS: Final[dict[bytes, Callable[[SMTPServer, bytes], Event | NeedData]]] = {
        b"HELO": _cmd_helo,
        b"EHLO": _cmd_ehlo,
        b"MAIL": _cmd_mail,
        b"RCPT": _cmd_rcpt,
        b"DATA": _cmd_data,
        b"BDAT": _cmd_bdat,
        b"RSET": _cmd_rset,
        b"NOOP": _cmd_noop,
        b"QUIT": _cmd_quit,
        b"VRFY": _cmd_vrfy,
        b"HELP": _cmd_help,
        b"STARTTLS": _cmd_starttls,
        b"AUTH": _cmd_auth,
    }

    # -- DATA -----------------------------------------------------------

    def _data_event(self) -> Event | NeedData:
        body = self._body
        assert body is not None
        while True:
            out, stop = self._scan_data()
            if stop is _Stop.BARE_LF:
                # qmail answers 451 and hangs up without reading on: a bare
                # LF is how SMTP smuggling hides a second message.
                self._state = State.DISCARD
                self._buf.clear()
                return BareLineFeed()
            chunk = body.accept(out) if out else b""
            if stop is _Stop.END:
                self._state = State.COMMAND
                end = EndOfData(body.size, body.too_big, body.hops.hops)
                if not chunk:
                    return end
                self._queue.append(end)
            if chunk:
                return DataChunk(chunk)
            if stop is _Stop.WAIT:
                if self._eof:
                    return ConnectionClosed()
                return NEED_DATA

    def _scan_data(self) -> tuple[bytes, _Stop]:
        """Decode dot-stuffed input (RFC 5321 §4.5.2) from the buffer front.

        CRLF -> LF; a CR not before LF is kept; "." CRLF at a line start
        ends the body; another leading "." is dropped; any LF without CR is
        BARE_LF. Scans at most MAX_CHUNK_BYTES; the few bytes that cannot be
        decided yet (".", ".\\r", a final CR) stay in the buffer.
        """
        buf = self._buf
        limit = min(len(buf), MAX_CHUNK_BYTES)
        pos = 0
        out: list[bytes] = []
        while True:
            if self._line_start:
                if pos >= len(buf):
                    stop = _Stop.WAIT
                    break
                if buf[pos] == _DOT:
                    ahead = bytes(buf[pos + 1 : pos + 3])
                    if ahead[:1] == b"\n":
                        return b"", _Stop.BARE_LF
                    if ahead == b"\r\n":
                        pos += 3
                        stop = _Stop.END
                        break
                    if ahead in (b"", b"\r"):
                        stop = _Stop.WAIT  # cannot tell ".\r\n" from "..." yet
                        break
                    pos += 1  # transparency: drop the stuffed dot
                self._line_start = False
            if pos >= limit:
                stop = _Stop.FULL if limit < len(buf) else _Stop.WAIT
                break
            last_lf = buf.rfind(b"\n", pos, limit)
            if last_lf < 0:
                end = limit - 1 if buf[limit - 1] == _CR else limit  # CR: next byte decides
                out.append(bytes(buf[pos:end]))
                pos = end
                stop = _Stop.FULL if limit < len(buf) else _Stop.WAIT
                break
            # Whole lines up to the last LF, or up to the "." CRLF line (left
            # to the line-start rule above), decoded in bulk: every LF must
            # follow a CR; unstuff dots, then CRLF -> LF.
            term = buf.find(b"\n.\r\n", pos, last_lf + 1)
            cut = term + 1 if term >= 0 else last_lf + 1
            region = bytes(buf[pos:cut])
            if region.count(b"\n") != region.count(b"\r\n"):
                return b"", _Stop.BARE_LF
            out.append(region.replace(b"\r\n.", b"\r\n").replace(b"\r\n", b"\n"))
            pos = cut
            self._line_start = True
        del buf[:pos]
        return b"".join(out), stop

    # -- BDAT -----------------------------------------------------------

    def _bdat_event(self) -> Event | NeedData:
        buf = self._buf
        while self._bdat_left:
            if not buf:
                return ConnectionClosed() if self._eof else NEED_DATA
            n = min(self._bdat_left, len(buf), MAX_CHUNK_BYTES)
            raw = bytes(buf[:n])
            del buf[:n]
            self._bdat_left -= n
            if self._bdat_reject is not None:
                continue  # refused chunk: read and drop
            assert self._body is not None  # set by every accepted BDAT
            chunk = self._body.accept(self._body.from_bdat(raw))
            if chunk:
                return DataChunk(chunk)
        self._state = State.COMMAND
        if self._bdat_reject is not None:
            reply, self._bdat_reject = self._bdat_reject, None
            return Rejected(reply)
        body = self._body
        assert body is not None
        tail = b""
        if self._bdat_last and body.held_cr:
            body.held_cr = False  # a CR at the very end is data, not half a CRLF
            tail = body.accept(b"\r")
        end = BdatEnd(self._bdat_last, body.size, body.too_big, body.hops.hops)
        if tail:
            self._queue.append(end)
            return DataChunk(tail)
        return end

    # -- output ---------------------------------------------------------

    def send(self, reply: Reply) -> bytes:
        """Wire bytes for reply, after updating the state it implies.

        The first call is the greeting (220, or 421/554). After that each
        reply answers the event awaiting one; 421 may be sent at any time
        and closes (RFC 5321 §3.8). Raises LocalProtocolError otherwise.
        """
        state = self._state
        if state is State.CLOSED:
            raise LocalProtocolError("connection is closed")
        if state is State.GREETING:
            if reply.code not in (220, 421, 554):
                raise LocalProtocolError(f"greeting must be 220, 421 or 554, not {reply.code}")
            self._state = State.CLOSED if reply.code == 421 else State.COMMAND
            return reply.to_bytes()
        if self._error is not None or reply.code == 421:
            self._close()  # the last word: after a peer error, or 421 anywhere
            return reply.to_bytes()
        event = self._awaiting
        if event is None:
            raise LocalProtocolError("no command awaits a reply")
        _check_reply(event, reply)
        self._awaiting = None
        self._REPLY_EFFECTS.get(type(event), SMTPServer._no_effect)(self, event, reply)
        return reply.to_bytes()

    def _close(self) -> None:
        self._state = State.CLOSED
        self._awaiting = None
        self._buf.clear()
        self._queue.clear()

    def _reset_transaction(self) -> None:
        self._mail = False
        self._rcpts = 0
        self._bdat_used = False
        self._body = None

    def _no_effect(self, event: Event, reply: Reply) -> None:
        pass

    def _on_helo(self, event: Event, reply: Reply) -> None:
        if reply.is_positive and isinstance(event, Helo):
            self._helo = event.name
            self._esmtp = event.extended
            self._reset_transaction()  # RFC 5321 §4.1.4

    def _on_mail(self, event: Event, reply: Reply) -> None:
        # A refused MAIL also ends the old transaction, so pipelined RCPTs
        # cannot land in a transaction the client thinks it replaced.
        self._reset_transaction()
        self._mail = reply.is_positive

    def _on_rcpt(self, event: Event, reply: Reply) -> None:
        if reply.is_positive:
            self._rcpts += 1

    def _on_data(self, event: Event, reply: Reply) -> None:
        if reply.code == 354:
            self._state = State.DATA
            self._line_start = True  # "." CRLF may be the very first line
            self._body = _Body(self._limits.max_message_bytes)

    def _on_message_end(self, event: Event, reply: Reply) -> None:
        # qmail: after DATA, accepted or not, the transaction is over (§9.2).
        if isinstance(event, EndOfData) or (isinstance(event, BdatEnd) and event.last):
            self._reset_transaction()
        elif not reply.is_positive:
            self._reset_transaction()  # RFC 3030 §2: a failed chunk fails the transaction

    def _on_bare_lf(self, event: Event, reply: Reply) -> None:
        self._close()

    def _on_rset(self, event: Event, reply: Reply) -> None:
        self._reset_transaction()

    def _on_quit(self, event: Event, reply: Reply) -> None:
        self._close()

    def _on_starttls(self, event: Event, reply: Reply) -> None:
        if reply.code == 220:
            # RFC 3207 §4.2: forget everything learned in plaintext, and drop
            # anything pipelined after STARTTLS (CVE-2011-0411 injection).
            self._buf.clear()
            self._skipping_long_line = False
            self._helo = None
            self._esmtp = False
            self._reset_transaction()
            self._tls = True
            self._authenticated = False

    def _on_auth(self, event: Event, reply: Reply) -> None:
        self._state = State.AUTH if reply.code == 334 else State.COMMAND
        if reply.code == 235:
            self._authenticated = True

    def _on_rejected(self, event: Event, reply: Reply) -> None:
        if self._state is State.AUTH:
            self._state = State.COMMAND  # a refused AUTH line ends the exchange

    _REPLY_EFFECTS: Final[dict[type, Callable[[SMTPServer, Event, Reply], None]]] = {
        Helo: _on_helo,
        Mail: _on_mail,
        Rcpt: _on_rcpt,
        Data: _on_data,
        EndOfData: _on_message_end,
        BdatEnd: _on_message_end,
        BareLineFeed: _on_bare_lf,
        Rset: _on_rset,
        Quit: _on_quit,
        StartTls: _on_starttls,
        Auth: _on_auth,
        AuthLine: _on_auth,
        Rejected: _on_rejected,
    }


def _check_reply(event: Event, reply: Reply) -> None:
    """Refuse replies that would desynchronise the two sides (our bug)."""
    code = reply.code
    name = type(event).__name__
    if 300 <= code < 400:
        if (code == 354 and isinstance(event, Data)) or (
            code == 334 and isinstance(event, Auth | AuthLine)
        ):
            return
        raise LocalProtocolError(f"{code} cannot answer {name}")
    if isinstance(event, Quit) != (code == 221):
        raise LocalProtocolError(f"{code} cannot answer {name}")  # RFC 5321 §4.1.1.10
    if code == 220 and not isinstance(event, StartTls):
        raise LocalProtocolError(f"220 cannot answer {name}")
