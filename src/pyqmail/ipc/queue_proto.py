"""The queue writer's socket protocol: both halves, in one place.

Client -> writer, each a netstring:
  1. header  ``QMQ1\\0<origin>``  origin: network | bounce | local
  2. message bytes in chunks (each non-empty, at most CHUNK_LIMIT)
  3. an empty netstring: end of message
  4. the envelope in qmail-queue's fd-1 form (``F..\\0T..\\0\\0``)
Writer -> client: one netstring ``K<id>`` (queued and fsynced), ``Z<text>``
or ``D<text>``.

After a K the connection stays open and the client may send the next
message's header on it; a one-shot client just closes. After a Z or a D,
and after any broken stream, the server closes: a client never reuses a
connection whose last message did not end in K. A server closes a
connection idle between messages for IDLE_S; a pooled client never reuses
one idle for POOL_IDLE_S (well under IDLE_S), so the two never race.

The client half (AsyncSubmission and WriterPool for asyncio programs,
SyncSubmission and submit_sync for blocking ones) is used by every
injector; the server half (SubmissionServer, parse_envelope) by the two
programs that listen on the socket: the queue writer and a mini node's
QMQP forwarder. What each does with the bytes, and when it may say K,
stays with it (its Receiver).

The asyncio halves are plain protocol objects on the event loop's
transports (no streams, no task per frame): the writer's socket carries
every message of the MTA.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pyqmail.formats import envelope as env_fmt
from pyqmail.formats import netstring
from pyqmail.ipc.frames import MAX_FRAME_BYTES, peer_uid_pid

if TYPE_CHECKING:  # imported where used: lspawn's workers never load asyncio
    import asyncio

    _AsyncioProtocol = asyncio.Protocol
else:
    _AsyncioProtocol = object  # the loop needs only the methods

MAGIC = b"QMQ1"
CHUNK_LIMIT = 1 << 20
ORIGINS = (b"network", b"bounce", b"local")
MAX_MESSAGE_BYTES = 1 << 31
ENVELOPE_LIMIT = 64 << 20
HEADER_LIMIT = 64
CLIENT_TIMEOUT_S = 24 * 3600  # qmail-queue's suicide alarm: one message at most this long
IDLE_S = 300.0  # the server closes a connection idle between messages this long
POOL_IDLE_S = 60.0  # a pooled client reuses a connection idle at most this long
POOL_SIZE = 32  # idle connections a pooled client keeps (a C=50 load reuses them too)
SWEEP_S = 30.0
FLUSH_BYTES = 64 << 10  # a client holds at most this much before writing

READ_ERROR = b"Zqq read error (#4.3.0)"
WRITE_ERROR = b"Zqq write error or disk full (#4.3.0)"
CRASHED = "qq crashed (#4.3.0)"


@dataclass(frozen=True, slots=True)
class QueueResult:
    status: str  # "K", "Z" or "D"
    text: str
    msg_id: int = 0


def parse_result(payload: bytes | None) -> QueueResult:
    if not payload:
        return QueueResult("Z", CRASHED)
    status, text = payload[:1].decode("latin-1"), payload[1:].decode("utf-8", "replace")
    if status == "K":
        return QueueResult("K", "ok", int(text) if text.isdigit() else 0)
    if status in ("Z", "D"):
        return QueueResult(status, text)
    return QueueResult("Z", "qq internal bug (#4.3.0)")


def header(origin: bytes) -> bytes:
    return netstring.encode(MAGIC + b"\0" + origin)


def _chunks(data: bytes) -> list[bytes]:
    return [netstring.encode(data[i : i + CHUNK_LIMIT]) for i in range(0, len(data), CHUNK_LIMIT)]


def _take_frame(buf: bytearray, limit: int) -> bytes | None:
    """Split one netstring payload off the front of buf; None until it is whole."""
    got = netstring.frame_at(buf, 0, limit=limit)
    if got is None:
        return None
    start, end = got
    payload = bytes(buf[start:end])
    del buf[: end + 1]
    return payload


# -- client side (asyncio) ---------------------------------------------------


class _ClientConn(_AsyncioProtocol):
    """One connection to the writer: frames out, one answer in per message."""

    def __init__(self) -> None:
        import asyncio

        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._buf = bytearray()
        self._reply: bytes | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._out: list[bytes] = []
        self._out_bytes = 0

    @classmethod
    async def connect(cls, path: str) -> _ClientConn:
        import asyncio

        _transport, conn = await asyncio.get_running_loop().create_unix_connection(cls, path)
        return conn

    # protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            payload = _take_frame(self._buf, MAX_FRAME_BYTES)
        except netstring.NetstringError:
            payload = None
            self._buf.clear()
            self.close()
        if payload is None:
            return
        if self._reply is not None or self._buf:
            self._reply = None  # two answers to one message: trust neither
            self.close()
        else:
            # it may come early: a refusal before the client has sent everything
            self._reply = payload
        self._wake(self._waiter)

    def eof_received(self) -> bool:
        self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self._wake(self._waiter)
        self._wake(self._drained)

    def pause_writing(self) -> None:
        if self._drained is None:
            self._drained = self.loop.create_future()

    def resume_writing(self) -> None:
        waiter, self._drained = self._drained, None
        self._wake(waiter)

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # used by AsyncSubmission
    def send(self, data: bytes) -> None:
        """Queue frames; they go out at FLUSH_BYTES or at flush(): a small
        message is one write, and one read for the writer."""
        self._out.append(data)
        self._out_bytes += len(data)

    async def flush(self, force: bool = False) -> None:
        if self._out_bytes < FLUSH_BYTES and not force:
            return
        data = b"".join(self._out)
        self._out.clear()
        self._out_bytes = 0
        if self._reply is not None:
            return  # already answered (refused): the rest of the message is moot
        if self.closed or self.transport is None:
            raise ConnectionResetError("the queue writer closed the connection")
        self.transport.write(data)
        if self._drained is not None:
            await self._drained
        if self._lost():
            raise ConnectionResetError("the queue writer closed the connection")

    def _lost(self) -> bool:
        """Closed without an answer (a refusal's answer still counts)."""
        return self.closed and self._reply is None

    async def answer(self) -> bytes | None:
        """The writer's answer to the message just sent; None if the connection died."""
        if self._reply is None and not self.closed:
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        reply, self._reply = self._reply, None
        return reply

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class AsyncSubmission:
    """Stream one message to the writer from an asyncio program."""

    def __init__(self, conn: _ClientConn, pool: WriterPool | None = None) -> None:
        self._conn: _ClientConn | None = conn
        self._pool = pool

    @classmethod
    async def open(cls, path: str, origin: bytes) -> AsyncSubmission:
        """A connection of its own, closed after this message (no pool)."""
        conn = await _ClientConn.connect(path)
        conn.send(header(origin))
        return cls(conn)

    async def write(self, data: bytes) -> None:
        conn = self._conn
        if conn is None:
            raise ConnectionResetError("submission already finished")
        if data:
            if len(data) <= CHUNK_LIMIT:
                conn.send(netstring.encode(data))
            else:
                for piece in _chunks(data):
                    conn.send(piece)
            await conn.flush()

    async def finish(self, envelope_wire: bytes) -> QueueResult:
        conn = self._conn
        try:
            if conn is None:
                return QueueResult("Z", CRASHED)
            conn.send(b"0:," + netstring.encode(envelope_wire))
            await conn.flush(force=True)
            res = parse_result(await conn.answer())
            if res.status == "K" and self._pool is not None:
                self._conn = None
                self._pool.give_back(conn)
            return res
        except OSError:
            return QueueResult("Z", CRASHED)
        finally:
            self.abort()

    def abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class WriterPool:
    """Idle connections to the writer for one origin, reused message after message.

    At most ``size`` idle connections are kept, none reused after
    POOL_IDLE_S; a connection the writer closed (restart, idle timeout)
    closes itself here too and is dropped when next looked at.
    """

    def __init__(self, path: str, origin: bytes, size: int = POOL_SIZE) -> None:
        self.path = path
        self._header = header(origin)
        self._size = size
        self._idle: deque[_ClientConn] = deque()

    async def open(self) -> AsyncSubmission:
        conn = self._take()
        if conn is None:
            conn = await _ClientConn.connect(self.path)
        conn.send(self._header)
        return AsyncSubmission(conn, self)

    def _take(self) -> _ClientConn | None:
        idle = self._idle
        if not idle:
            return None
        now = idle[-1].loop.time()
        while idle and (idle[0].closed or now - idle[0].idle_since > POOL_IDLE_S):
            idle.popleft().close()
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def give_back(self, conn: _ClientConn) -> None:
        if conn.closed or len(self._idle) >= self._size:
            conn.close()
            return
        conn.idle_since = conn.loop.time()
        self._idle.append(conn)

    @property
    def idle(self) -> int:
        """Idle connections still open (ones the writer closed are not counted)."""
        return sum(not conn.closed for conn in self._idle)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


# -- client side (blocking) -----------------------------------------------------


def submit_sync(
    path: str, origin: bytes, message: bytes, envelope_wire: bytes, timeout: float = 600.0
) -> QueueResult:
    """Blocking one-shot submission (qmail-queue program, forwards, bounces)."""
    try:
        sub = SyncSubmission.open(path, origin, timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        return QueueResult("Z", "qq unable to reach the queue writer (#4.3.0)")
    except OSError:
        return QueueResult("Z", CRASHED)
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
            sock.sendall(header(origin))
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
            return QueueResult("Z", CRASHED)
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


def parse_origin(frame: bytes) -> bytes:
    """The header frame; returns the origin the client claims (one of ORIGINS)."""
    if not frame.startswith(MAGIC + b"\0"):
        raise QueueFailure("Z", "qq internal bug (#4.3.0)")
    origin = frame[len(MAGIC) + 1 :]
    if origin not in ORIGINS:
        raise QueueFailure("Z", "qq internal bug (#4.3.0)")
    return origin


def parse_envelope(wire: bytes) -> env_fmt.Envelope:
    """The envelope frame, parsed strictly; errors map as qmail-queue's exit codes."""
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


class Receiver(Protocol):
    """What a server does with one message (the queue writer, the forwarder)."""

    def chunk(self, data: bytes) -> None:
        """The next piece of the message; QueueFailure refuses it."""

    def finish(self, env: env_fmt.Envelope, reply: Callable[[bytes], None]) -> None:
        """The whole message is in: call ``reply`` later with K<id>, Z.. or D...

        Raising QueueFailure refuses it at once (abort() follows). Once this
        returns, the message is the receiver's alone: abort() is not called.
        """

    def abort(self) -> None:
        """The stream broke or was refused before finish(): forget the message."""


# origin, peer uid, peer pid -> the receiver of one message (QueueFailure refuses)
OpenMessage = Callable[[bytes, int, int], Receiver]

_HEADER, _BODY, _ENVELOPE, _ANSWERING, _CLOSED = range(5)
_LIMITS = {_HEADER: HEADER_LIMIT, _BODY: CHUNK_LIMIT, _ENVELOPE: ENVELOPE_LIMIT}


class SubmissionServer:
    """The server half: a protocol factory for the loop's Unix server.

    Keeps its connections so one sweep every SWEEP_S closes those idle
    between messages for IDLE_S and refuses messages older than
    CLIENT_TIMEOUT_S (no timer per message).
    """

    def __init__(
        self,
        open_message: OpenMessage,
        *,
        max_bytes: int = MAX_MESSAGE_BYTES,
        idle_s: float = IDLE_S,
        client_s: float = CLIENT_TIMEOUT_S,
    ) -> None:
        self.open_message = open_message
        self.max_bytes = max_bytes
        self.idle_s = idle_s
        self.client_s = client_s
        self.conns: set[_ServerConn] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    def __call__(self) -> _ServerConn:
        if self._sweeper is None:
            self._schedule()
        return _ServerConn(self)

    def _schedule(self) -> None:
        import asyncio

        self._sweeper = asyncio.get_running_loop().call_later(
            min(SWEEP_S, self.idle_s / 2), self.sweep
        )

    def sweep(self) -> None:
        self._sweeper = None
        for conn in list(self.conns):
            conn.check_timeouts()
        if self.conns:  # an idle server sleeps until its next client
            self._schedule()

    def close(self) -> None:
        """At shutdown: no more sweeps, and idle connections closed (their
        clients reconnect to the next server); messages in progress go on."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.conns):
            conn.close_if_idle()


class _ServerConn(_AsyncioProtocol):
    """One client connection: frames in, one answer out per message."""

    def __init__(self, server: SubmissionServer) -> None:
        import asyncio

        self.server = server
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.state = _HEADER
        self.since = self._loop.time()
        self._buf = bytearray()
        self._receiver: Receiver | None = None
        self._size = 0
        self._uid, self._pid = -1, 0
        self._eof = False
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            self._uid, self._pid = peer_uid_pid(sock)
        self.server.conns.add(self)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self.state == _ANSWERING:
            # the client should wait for the answer; don't let it pile up
            if len(self._buf) > HEADER_LIMIT and not self._paused and self.transport:
                self._paused = True
                self.transport.pause_reading()
            return
        self._parse()

    def _parse(self) -> None:
        try:
            while self.state in _LIMITS:
                frame = _take_frame(self._buf, _LIMITS[self.state])
                if frame is None:
                    return
                self._frame(frame)
        except QueueFailure as exc:
            self._fail(exc.reply)
        except netstring.NetstringError:
            self._fail(READ_ERROR)
        except OSError:
            self._fail(WRITE_ERROR)

    def _frame(self, frame: bytes) -> None:
        if self.state == _BODY:
            if frame:
                self._size += len(frame)
                if self._size > self.server.max_bytes:
                    raise QueueFailure("D", "qq permanent problem (#5.3.0)")
                assert self._receiver is not None
                self._receiver.chunk(frame)
            else:
                self.state = _ENVELOPE
        elif self.state == _HEADER:
            origin = parse_origin(frame)
            self._receiver = self.server.open_message(origin, self._uid, self._pid)
            self.state = _BODY
            self._size = 0
            self.since = self._loop.time()
        else:
            env = parse_envelope(frame)
            assert self._receiver is not None
            self.state = _ANSWERING
            self._receiver.finish(env, self._answer)
            self._receiver = None

    def _answer(self, reply: bytes) -> None:
        if self.state != _ANSWERING or self.transport is None:
            return  # the client left; what the receiver did stands
        self.transport.write(netstring.encode(reply))
        if reply[:1] != b"K" or self._eof:
            self._close()
            return
        self.state = _HEADER
        self.since = self._loop.time()
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        if self._buf:
            self._loop.call_soon(self._parse)

    def _fail(self, reply: bytes) -> None:
        self._drop_message()
        if self.transport is not None and self.state != _CLOSED:
            self.transport.write(netstring.encode(reply))
        self._close()

    def _drop_message(self) -> None:
        receiver, self._receiver = self._receiver, None
        if receiver is not None:
            receiver.abort()

    def _close(self) -> None:
        self.state = _CLOSED
        if self.transport is not None:
            self.transport.close()

    def close_if_idle(self) -> None:
        if self.state == _HEADER and not self._buf:
            self._close()

    def check_timeouts(self) -> None:
        age = self._loop.time() - self.since
        if self.state == _HEADER and not self._buf and age > self.server.idle_s:
            self._close()
        elif self.state in _LIMITS and age > self.server.client_s:
            self._fail(READ_ERROR)

    def eof_received(self) -> bool:
        if self.state == _ANSWERING:
            self._eof = True  # a half-close after the envelope: it still gets its answer
            return True
        if self.state == _HEADER and not self._buf:
            self._close()  # a client done with the connection
        elif self.state != _CLOSED:
            self._fail(READ_ERROR)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._drop_message()
        self.state = _CLOSED
        self.transport = None
        self.server.conns.discard(self)

    def pause_writing(self) -> None:
        pass  # answers are a few bytes, one per message

    def resume_writing(self) -> None:
        pass
