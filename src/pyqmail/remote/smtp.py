"""qmail-remote's SMTP client: one connection, then many messages over it.

Runs as: qmailr (the invoking user in embedded mode), inside rspawn.
Reads:   nothing itself; remote/deliver.py hands it the message and settings.
Trusts:  nothing from the remote server: replies are parsed with bounded
         line length and count, and its text is cut before it reaches logs.
Standards: RFC 5321, 1870 (SIZE), 2920 (PIPELINING), 3207 (STARTTLS),
         6152 (8BITMIME), 6531 (SMTPUTF8).

Theory of operation. deliver.py connects; ``start_session`` reads the
greeting, says EHLO (HELO when EHLO is refused), upgrades with STARTTLS as
the policy asks and says EHLO again. ``send_message`` drives the sans-IO
``ClientTransaction`` (proto/smtp/transaction.py) over the connection: with
PIPELINING a message over a reused connection costs two round trips, and
recipients refused with 452 go again in a further transaction. The session
then goes back to the pool in deliver.py for the next message to the same
host.

Result texts follow qmail-remote's reports (qmail-protocols §2.2), one per
recipient: K (accepted), Z (try again later) or D (give up), each with the
remote's reply ("Remote host said: ...").
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar, cast

from pyqmail.net.streams import Reader, Writer
from pyqmail.net.tls import TlsError, TlsStream
from pyqmail.proto.smtp.client import (
    ReplyError,
    ReplyParser,
    ServerReply,
    ehlo_keywords,
)
from pyqmail.proto.smtp.transaction import (
    ClientTransaction,
    Outcome,
    Stage,
    TransactionError,
)
from pyqmail.remote.route import Target, literal_ip

if TYPE_CHECKING:
    import ssl

T = TypeVar("T")

SERVER_TEXT_LIMIT = 5000
READ_CHUNK = 65536


class Died(Exception):
    """The connection broke or the server spoke something that is not SMTP."""


@dataclass(frozen=True, slots=True)
class NextHost:
    """This host cannot take the message now; try the next one (text if none can)."""

    text: bytes


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message as sent: the envelope and the wire form of the body."""

    sender: bytes
    recipients: tuple[bytes, ...]
    size: int
    eightbit: bool
    wire: bytes  # dot-stuffed, CRLF, ending with ".\r\n"


def said(reply: ServerReply) -> bytes:
    text = reply.text[:SERVER_TEXT_LIMIT].replace(b"\r", b"").replace(b"\0", b"?")
    return b"Remote host said: " + text + b"\n"


@dataclass(eq=False)
class Session:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    timeout: float
    target: Target
    parser: ReplyParser = field(default_factory=ReplyParser)
    pending: list[ServerReply] = field(default_factory=list)
    ext: dict[bytes, bytes] = field(default_factory=dict)
    tls: bool = False
    needs_rset: bool = False
    broken: bool = False
    messages: int = 0
    opened: float = field(default_factory=time.monotonic)
    idle_since: float = 0.0
    raw: asyncio.BaseTransport | None = None  # the TCP transport under any TLS
    # what commands and replies go through: the TCP streams, or TLS over them
    rd: Reader = field(init=False)
    wr: Writer = field(init=False)

    def __post_init__(self) -> None:
        self.raw = self.writer.transport
        self.rd = self.reader
        self.wr = self.writer

    @property
    def ip(self) -> bytes:
        return self.target.ip.encode()

    # control/timeoutremote bounds each wait for the server. One timer per
    # session, re-armed only when it goes off, keeps that bound: a timer per
    # wait (asyncio.timeout) is armed, moved and cancelled twice a message.
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)
    _waiter: asyncio.Task[object] | None = field(default=None, init=False, repr=False)
    _waiting_since: float = field(default=0.0, init=False, repr=False)
    _timer: asyncio.TimerHandle | None = field(default=None, init=False, repr=False)
    _timed_out: bool = field(default=False, init=False, repr=False)

    async def _wait(self, aw: Awaitable[T]) -> T:
        """await aw, or TimeoutError once it took longer than self.timeout."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        self._waiter, self._waiting_since = task, loop.time()
        if self._timer is None:
            self._timer = loop.call_at(self._waiting_since + self.timeout, self._check)
        try:
            return await aw
        except asyncio.CancelledError:
            if not self._timed_out or task.uncancel():
                raise
            raise TimeoutError from None
        finally:
            self._waiter, self._timed_out = None, False

    def _check(self) -> None:
        self._timer = None  # a wait that starts later arms it again
        if self._waiter is None:
            return
        due = self._waiting_since + self.timeout
        loop = self._loop
        assert loop is not None  # armed by _wait, which set it
        if loop.time() >= due:
            self._timed_out = True
            self._waiter.cancel()
        else:
            self._timer = loop.call_at(due, self._check)

    async def reply(self) -> ServerReply:
        while not self.pending:
            try:
                data = await self._wait(self.rd.read(READ_CHUNK))
            except (TimeoutError, OSError, TlsError) as exc:
                self.broken = True
                raise Died from exc
            if not data:
                self.broken = True
                raise Died
            try:
                self.pending.extend(self.parser.feed(data))
            except ReplyError as exc:
                self.broken = True
                raise Died from exc
        return self.pending.pop(0)

    async def send(self, data: bytes) -> None:
        try:
            self.wr.write(data)
            await self._wait(self.wr.drain())
        except (TimeoutError, OSError) as exc:
            self.broken = True
            raise Died from exc

    async def command(self, line: bytes) -> ServerReply:
        await self.send(line)
        return await self.reply()

    @property
    def usable(self) -> bool:
        return not (self.broken or self.writer.is_closing() or self.reader.at_eof())

    def close(self) -> None:
        """QUIT without waiting for the answer, as qmail-remote does.

        A broken session (a failed TLS handshake, a dead peer) is aborted at
        the socket: a TLS layer in a failed state may never let go of it.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.writer.is_closing() and not self.broken:
            with contextlib.suppress(OSError, RuntimeError):
                self.wr.write(b"QUIT\r\n")
        with contextlib.suppress(OSError, RuntimeError):
            self.wr.close()  # under TLS: close_notify, then the TCP stream
        self.writer.close()
        if self.broken and self.raw is not None:
            # uvloop's transports do not inherit from asyncio's classes: no isinstance
            cast(asyncio.Transport, self.raw).abort()

    async def wait_closed(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):  # ssl.SSLError is an OSError
            await self.writer.wait_closed()


# -- opening --------------------------------------------------------------------------


class TlsTrouble(Exception):
    """STARTTLS failed after it was started: the connection is unusable."""

    def __init__(self, text: bytes) -> None:
        super().__init__(text)
        self.text = text


@dataclass(frozen=True, slots=True)
class Hello:
    """What open_session needs to know besides the target."""

    helohost: str
    own_names: frozenset[str]  # lowercased: a server answering with one loops back to us
    tls: ssl.SSLContext | None  # None: never STARTTLS
    tls_required: bool


def _name_in(reply: ServerReply) -> str:
    first = reply.lines[0] if reply.lines else b""
    return first.split(b" ", 1)[0].decode("ascii", "replace").lower()


async def _ehlo(s: Session, helohost: bytes) -> ServerReply | NextHost:
    hello = await s.command(b"EHLO " + helohost + b"\r\n")
    if hello.code == 250:
        s.ext = ehlo_keywords(hello)
        return hello
    if hello.code == 421:
        return NextHost(b"ZConnected to " + s.ip + b" but my name was rejected.\n" + said(hello))
    hello = await s.command(b"HELO " + helohost + b"\r\n")
    if hello.code != 250:
        return NextHost(b"ZConnected to " + s.ip + b" but my name was rejected.\n" + said(hello))
    s.ext = {}
    return hello


def _loops(s: Session, reply: ServerReply, hello: Hello) -> NextHost | None:
    name = _name_in(reply)
    if name and name in hello.own_names:
        return NextHost(
            b"DConnected to "
            + s.ip
            + b" but it greeted me as "
            + name.encode()
            + b": mail for this host loops back to myself. (#5.4.6)\n"
            + said(reply)
        )
    return None


async def start_session(s: Session, hello: Hello) -> NextHost | None:
    """Greeting, EHLO/HELO, STARTTLS and EHLO again; None when ready for MAIL.

    Raises Died (connection lost) and TlsTrouble (handshake failed).
    """
    greet = await s.reply()
    if greet.code != 220:
        return NextHost(b"ZConnected to " + s.ip + b" but greeting failed.\n" + said(greet))
    looped = _loops(s, greet, hello)
    if looped:
        return looped
    helo = hello.helohost.encode()
    answer = await _ehlo(s, helo)
    if isinstance(answer, NextHost):
        return answer
    looped = _loops(s, answer, hello)
    if looped:
        return looped
    if hello.tls is None:
        return None
    if b"STARTTLS" not in s.ext:
        if hello.tls_required:
            return NextHost(
                b"ZConnected to " + s.ip + b" but TLS is required and it does not offer "
                b"STARTTLS. (#4.7.4)\n"
            )
        return None
    reply = await s.command(b"STARTTLS\r\n")
    if reply.code != 220:
        if hello.tls_required:
            return NextHost(
                b"ZConnected to "
                + s.ip
                + b" but TLS is required and STARTTLS failed.\n"
                + said(reply)
            )
        return None
    if s.pending or s.parser.buffered:
        # bytes sent before the handshake would be taken as sent under TLS (CVE-2011-0411)
        s.broken = True
        raise Died
    # verify checks the name connected to; for an address literal, the address
    server_name = s.target.ip if literal_ip(s.target.host) else s.target.host
    try:
        async with asyncio.timeout(s.timeout):
            stream = await TlsStream.connect(s.reader, s.writer, hello.tls, server_name)
    except (TlsError, OSError, TimeoutError) as exc:
        s.broken = True
        why = str(exc.__cause__ or exc)[:200].encode("utf-8", "replace")
        raise TlsTrouble(
            b"ZConnected to " + s.ip + b" but the TLS handshake failed: " + why + b" (#4.7.5)\n"
        ) from exc
    s.rd = s.wr = stream
    s.tls = True
    s.parser = ReplyParser()
    answer = await _ehlo(s, helo)
    if isinstance(answer, NextHost):
        return answer
    return None


# -- sending --------------------------------------------------------------------------


class Unsendable(Exception):
    """This server cannot take this message at all (a D for every recipient)."""

    def __init__(self, text: bytes) -> None:
        super().__init__(text)
        self.text = text


def _params(s: Session, msg: Outgoing) -> bytes:
    """MAIL FROM parameters for what the server offered; Unsendable if it cannot do."""
    params = b""
    limit = s.ext.get(b"SIZE")
    if limit is not None:
        if limit.isdigit() and 0 < int(limit) < msg.size:
            raise Unsendable(
                b"DConnected to "
                + s.ip
                + b" but the message is bigger than its limit of "
                + limit
                + b" bytes. (#5.3.4)\n"
            )
        params += b" SIZE=%d" % msg.size
    if b"8BITMIME" in s.ext and msg.eightbit:
        params += b" BODY=8BITMIME"
    if any(not a.isascii() for a in (msg.sender, *msg.recipients)):
        if b"SMTPUTF8" not in s.ext:
            raise Unsendable(
                b"DConnected to " + s.ip + b" but it does not offer SMTPUTF8, which these "
                b"addresses need. (#5.6.7)\n"
            )
        params += b" SMTPUTF8"
    return params


def _report(ip: bytes, out: Outcome | None) -> bytes:
    """qmail-remote's text for one recipient's outcome (qmail-protocols §2.2)."""
    if out is None or out.reply is None:
        dup = b" Possible duplicate!" if out is not None and out.after_dot else b""
        return b"ZConnected to " + ip + b" but connection died." + dup + b" (#4.4.2)\n"
    r = out.reply
    status = b"D" if r.kind == 5 else b"Z"
    if out.stage is Stage.MAIL:
        return status + b"Connected to " + ip + b" but sender was rejected.\n" + said(r)
    if out.stage is Stage.RCPT:
        return (
            status + ip + b" does not like recipient.\n" + said(r) + b"Giving up on " + ip + b".\n"
        )
    if out.stage is Stage.DATA:
        return status + ip + b" failed on DATA command.\n" + said(r)
    if out.accepted:
        return b"K" + ip + b" accepted message.\n" + said(r)
    return status + ip + b" failed after I sent the message.\n" + said(r)


async def send_message(s: Session, msg: Outgoing, reused: bool) -> list[bytes] | None:
    """Per-recipient reports in msg.recipients order.

    None when a reused connection turns out to have been closed by the
    server before it answered anything (try again on a fresh one).
    """
    try:
        params = _params(s, msg)
    except Unsendable as exc:
        return [exc.text] * len(msg.recipients)
    tx = ClientTransaction(
        msg.sender,
        msg.recipients,
        params,
        msg.wire,
        pipelining=b"PIPELINING" in s.ext,
        rset_first=s.needs_rset,
    )
    try:
        while not tx.done:
            out = tx.to_send()
            if out:
                await s.send(out)
            reply = await s.reply()
            if reused and tx.answered == 0 and reply.code == 421:
                s.broken = True  # the server's idle timeout won the race
                return None
            tx.receive(reply)
    except (Died, TransactionError):
        if reused and tx.answered == 0:
            return None
        tx.died()
    s.needs_rset = tx.needs_rset
    s.broken = s.broken or tx.broken
    s.messages += tx.messages
    return [_report(s.ip, out) for out in tx.outcomes]
