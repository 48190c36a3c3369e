"""smtpd's session loop: time limits bound waits for the client only; replies batch.

In-memory streams: a reader that hands out scripted chunks and then keeps
the client silent, a writer that records each write() separately.
"""

from __future__ import annotations

import asyncio
import dataclasses

from pyqmail.net.peer import Client
from pyqmail.smtpd.policy import Service, SmtpPolicy
from pyqmail.smtpd.session import serve_smtp
from tests.protocol.test_smtpd_policy import CFG, MemoryQueue, MemorySubmission


class ScriptedReader:
    """Chunks, each after an optional pause; then a client that says nothing."""

    def __init__(self, *chunks: bytes, silent_after: bool = True) -> None:
        self.chunks = list(chunks)
        self.silent_after = silent_after

    async def read(self, n: int) -> bytes:
        if self.chunks:
            return self.chunks.pop(0)
        if self.silent_after:
            await asyncio.Event().wait()
        return b""


class WriteLog:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None

    def lines(self) -> list[bytes]:
        return b"".join(self.writes).split(b"\r\n")[:-1]


@dataclasses.dataclass
class SlowQueue(MemoryQueue):
    delay: float = 0.0

    async def open(self) -> MemorySubmission:
        await asyncio.sleep(self.delay)
        return MemorySubmission(self)


DIALOG = (
    b"EHLO c.example\r\n",
    b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@mx.example>\r\nDATA\r\n",
    b"Subject: t\r\n\r\nbody\r\n.\r\n",
)


def run_session(
    reader: ScriptedReader, queue: MemoryQueue, timeout: int = 5, session: int = 3600
) -> WriteLog:
    config = dataclasses.replace(CFG, timeout=timeout, timeoutsmtpdsession=session)
    policy = SmtpPolicy(config, Client(remote_ip="192.0.2.1"), queue, Service())
    log = WriteLog()
    asyncio.run(asyncio.wait_for(serve_smtp(reader, log, policy), 60))
    return log


def test_silent_client_gets_451_timeout_after_timeoutsmtpd() -> None:
    log = run_session(ScriptedReader(b"EHLO c.example\r\n"), MemoryQueue(), timeout=1)
    assert log.lines()[-1] == b"451 timeout (#4.4.2)"


def test_slow_queue_is_not_the_clients_timeout() -> None:
    # the queue takes longer than timeoutsmtpd: smtpd was not waiting for the client
    queue = SlowQueue(delay=1.5)
    log = run_session(ScriptedReader(*DIALOG, b"QUIT\r\n"), queue, timeout=1)
    codes = [line[:3] for line in log.lines()]
    assert codes[-4:] == [b"250", b"354", b"250", b"221"], log.lines()
    assert len(queue.messages) == 1


def test_session_limit_ends_a_busy_session_with_421() -> None:
    busy = [b"NOOP\r\n"] * 400

    class PacedReader(ScriptedReader):
        async def read(self, n: int) -> bytes:
            await asyncio.sleep(0.01)  # always talking, never idle for timeoutsmtpd
            return await super().read(n)

    log = run_session(PacedReader(*busy), MemoryQueue(), timeout=5, session=1)
    assert log.lines()[-1].startswith(b"421 session time limit exceeded")
    assert 2 < len(log.lines()) < 400


def test_pipelined_replies_leave_in_one_write() -> None:
    log = run_session(ScriptedReader(*DIALOG, b"QUIT\r\n", silent_after=False), MemoryQueue())
    assert log.writes[2] == b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go ahead\r\n"
    assert len(log.writes) == 5  # greeting, EHLO, the pipelined three, the message, QUIT
