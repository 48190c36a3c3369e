"""smtpd's questions to the lookup service (lspawn's side of the fence).

smtpd runs unprivileged and can read neither users' homes (for the RCPT
check) nor users/password (for AUTH); the service runs where local
delivery's lookups work (root in a system install) and answers over
queue/lock/lookup.sock, to smtpd's uid (and root) only:

  smtpd -> service   netstring ``RCPT1\\0<address>``
                     netstring ``AUTH1\\0<user>\\0<password>\\0<timestamp>``
  service -> smtpd   netstring ``K`` (RCPT: deliverable or not ours to judge;
                                AUTH: password right), ``D<text>`` (RCPT: would
                                bounce; AUTH: wrong), ``Z<text>`` (cannot tell now)

A connection carries any number of questions, one at a time: smtpd writes
a question and waits for its answer before the next, so answers need no
tags. smtpd keeps a few connections open between questions (a pool, one
connection per question in flight, at most MAX_IDLE kept idle); the
service checks the peer's uid once per connection and hangs up on one
quiet for IDLE_TIMEOUT_S, on a malformed request, and on one it cannot
answer in time. A connection that fails or times out is dropped, never
reused; a question that finds its reused connection already hung up on is
asked again once on a new one (both questions only read, so asking twice
is harmless). smtpd answers Z (4xx) when the service cannot be reached.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

from pyqmail.formats import netstring
from pyqmail.ipc.frames import FrameBuffer, pack

RCPT = b"RCPT1"
AUTH = b"AUTH1"
MAX_REQUEST_BYTES = 4096  # an address <= 1000 bytes; user and password bounded by sasl
MAX_ANSWER_BYTES = 512
RCPT_TIMEOUT_S = 10.0
AUTH_TIMEOUT_S = 40.0  # the checkpassword program itself gets 30
IDLE_TIMEOUT_S = 120.0  # the service hangs up on a connection quiet this long
MAX_IDLE = 16  # connections smtpd keeps open between questions
UNREACHABLE = b"Zunable to reach the lookup service (#4.3.0)"


@dataclass(frozen=True, slots=True)
class RcptQuestion:
    address: bytes


@dataclass(frozen=True, slots=True)
class AuthQuestion:
    user: bytes
    password: bytes
    timestamp: bytes


def decode_request(payload: bytes) -> RcptQuestion | AuthQuestion:
    """Parse one request; ValueError for anything malformed."""
    fields = payload.split(b"\0")
    if fields[0] == RCPT and len(fields) == 2:
        return RcptQuestion(fields[1])
    if fields[0] == AUTH and len(fields) == 4 and fields[1]:
        return AuthQuestion(fields[1], fields[2], fields[3])
    raise ValueError("malformed lookup request")


class HungUp(ConnectionError):
    """The service closed the connection before answering."""


class _Connection(asyncio.Protocol):
    """smtpd's end of one connection: a question out, its answer back."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._frames = FrameBuffer(MAX_ANSWER_BYTES)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[bytes] | None = None
        self._deadline = 0.0  # of the question in flight
        self._timer: asyncio.TimerHandle | None = None
        self.usable = False  # open, and no answer outstanding or out of step

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not inherit from asyncio's classes: no isinstance
        self._transport = cast(asyncio.Transport, transport)
        self.usable = True

    def data_received(self, data: bytes) -> None:
        try:
            answers = self._frames.feed(data)
        except netstring.NetstringError as exc:
            self._fail(exc)
            return
        if not answers:
            return
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done() or len(answers) > 1:
            self._fail(ConnectionError("answer to no question from the lookup service"))
            return
        waiter.set_result(answers[0])

    def eof_received(self) -> bool:
        self._fail(HungUp("the lookup service hung up"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(HungUp("the lookup service hung up") if exc is None else exc)

    def _check_deadline(self) -> None:
        # one timer per connection, re-armed only when it goes off, instead of
        # one armed and cancelled per question
        self._timer = None
        if self._waiter is None:
            return  # answered; the next question arms it again
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)
            return
        self._fail(TimeoutError("the lookup service did not answer in time"))

    def _fail(self, exc: Exception) -> None:
        self.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.usable = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.close()

    async def ask(self, request: bytes, deadline: float) -> bytes:
        """The answer's payload; raises OSError, TimeoutError or NetstringError."""
        transport = self._transport
        if not self.usable or transport is None:
            raise HungUp("the lookup service hung up")
        self.usable = False  # until the answer is in: a cancelled question leaves it out of step
        waiter = self._loop.create_future()
        self._waiter = waiter
        self._deadline = deadline
        if self._timer is None or self._timer.when() > deadline:  # an RCPT after an AUTH
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._check_deadline)
        try:
            transport.write(request)
            answer: bytes = await waiter
        except BaseException:
            self.close()
            raise
        self.usable = True
        return answer


class LookupClient:
    """The pool of connections to one service socket, in one event loop."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[_Connection] = []

    async def ask(self, request: bytes, timeout: float) -> bytes:
        """K, D<text> or Z<text>; UNREACHABLE when no valid answer came in time."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self.close()  # connections of an earlier loop cannot serve this one
            self._loop = loop
        deadline = loop.time() + timeout
        answer: bytes | None = None
        try:
            while self._idle and answer is None:
                conn = self._idle.pop()
                try:
                    answer = await conn.ask(request, deadline)
                except ConnectionError:
                    continue  # hung up on while it sat idle: ask on another
            if answer is None:
                async with asyncio.timeout_at(deadline):
                    _, conn = await loop.create_unix_connection(
                        lambda: _Connection(loop), self.path
                    )
                answer = await conn.ask(request, deadline)
        except (OSError, TimeoutError, netstring.NetstringError):
            return UNREACHABLE
        if not answer or answer[:1] not in (b"K", b"D", b"Z"):
            conn.close()
            return UNREACHABLE
        if len(self._idle) < MAX_IDLE:
            self._idle.append(conn)
        else:
            conn.close()
        return answer

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    def close(self) -> None:
        """Hang up the idle connections (in their own loop, if it still runs)."""
        idle, self._idle = self._idle, []
        if self._loop is None or self._loop.is_closed():
            return
        for conn in idle:
            conn.close()


_clients: dict[str, LookupClient] = {}


def client(socket_path: str) -> LookupClient:
    """The process's pool for one service socket."""
    pool = _clients.get(socket_path)
    if pool is None:
        pool = _clients[socket_path] = LookupClient(socket_path)
    return pool


def close_all() -> None:
    """Hang up every idle connection (a session under tcpserver, at its end)."""
    for pool in _clients.values():
        pool.close()


async def ask_rcpt(socket_path: str, address: bytes) -> bytes:
    """K, D<text> or Z<text> for a recipient; Z when the service cannot be reached."""
    return await client(socket_path).ask(pack(RCPT, address), RCPT_TIMEOUT_S)


async def ask_auth(socket_path: str, user: bytes, password: bytes, timestamp: bytes) -> bytes:
    """K (right), D (wrong) or Z (cannot tell) for a user's password."""
    return await client(socket_path).ask(pack(AUTH, user, password, timestamp), AUTH_TIMEOUT_S)
