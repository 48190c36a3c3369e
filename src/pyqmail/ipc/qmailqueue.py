"""The qmail-queue interface as a client: $QMAILQUEUE instead of the writer socket.

When QMAILQUEUE names a program (a content filter such as qmail-scanner or
simscan, which in turn calls the real qmail-queue), a listener hands it
each message exactly as qmail does (qmail-protocols §1): the message on
its fd 0, closed, then the envelope on its fd 1, closed, then the exit
code decides the reply. The program's own exit codes map to qmail's texts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence

from pyqmail.ipc.queue_proto import QueueResult
from pyqmail.unix.spawn import spawn, wait_exit, wake

QQ_TIMEOUT_S = 3600.0  # a filter may be slow; qmail waits for it forever

# qmail.c's qmail_close(), qmail-protocols §1.1
_TEXTS = {
    11: "envelope address too long for qq (#5.1.3)",
    115: "envelope address too long for qq (#5.1.3)",
    31: "mail server permanently rejected message (#5.3.0)",
    51: "qq out of memory (#4.3.0)",
    52: "qq timeout (#4.3.0)",
    53: "qq write error or disk full (#4.3.0)",
    54: "qq read error (#4.3.0)",
    55: "qq unable to read configuration (#4.3.0)",
    56: "qq trouble making network connection (#4.3.0)",
    61: "qq trouble in home directory (#4.3.0)",
    62: "qq trouble creating files in queue (#4.3.0)",
    63: "qq trouble creating files in queue (#4.3.0)",
    64: "qq trouble creating files in queue (#4.3.0)",
    65: "qq trouble creating files in queue (#4.3.0)",
    66: "qq trouble creating files in queue (#4.3.0)",
    71: "mail server temporarily rejected message (#4.3.0)",
    72: "connection to mail server timed out (#4.4.1)",
    73: "connection to mail server rejected (#4.4.1)",
    74: "communication with mail server failed (#4.4.2)",
    81: "qq internal bug (#4.3.0)",
    91: "qq internal bug (#4.3.0)",
    120: "unable to exec qq (#4.3.0)",
}


def result_of_exit(code: int | None) -> QueueResult:
    """qmail-queue's exit code -> K / Z / D with qmail's text. None: it crashed."""
    if code is None or code < 0:
        return QueueResult("Z", "qq crashed (#4.3.0)")
    if code == 0:
        return QueueResult("K", "ok")
    text = _TEXTS.get(code)
    permanent = code in (11, 115) or 11 <= code <= 40
    if text is None:
        text = "qq permanent problem (#5.3.0)" if permanent else "qq temporary problem (#4.3.0)"
    return QueueResult("D" if permanent else "Z", text)


_REAPERS: set[asyncio.Task[int | None]] = set()  # children of aborted submissions


async def _write_all(fd: int, data: bytes) -> None:
    """Write to a non-blocking pipe, waiting for room without blocking the loop."""
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_writer(fd, wake, ready)
            try:
                await ready
            finally:
                loop.remove_writer(fd)


class ProgramSubmission:
    """One message on its way into a qmail-queue-compatible program."""

    def __init__(self, pid: int, message_fd: int, envelope_fd: int) -> None:
        self.pid = pid
        self._message_fd: int | None = message_fd
        self._envelope_fd: int | None = envelope_fd
        self._reaped = False

    @classmethod
    def open(cls, argv: Sequence[str], env: dict[str, str]) -> ProgramSubmission:
        """Start the program; raises OSError when it cannot be run."""
        msg_r, msg_w = os.pipe()
        env_r, env_w = os.pipe()
        try:
            pid = spawn(argv, {0: msg_r, 1: env_r}, env)
        except OSError:
            for fd in (msg_w, env_w):
                os.close(fd)
            raise
        finally:
            os.close(msg_r)
            os.close(env_r)
        os.set_blocking(msg_w, False)
        os.set_blocking(env_w, False)
        return cls(pid, msg_w, env_w)

    def _close(self, which: str) -> None:
        fd = getattr(self, which)
        if fd is not None:
            setattr(self, which, None)
            os.close(fd)

    async def write(self, data: bytes) -> None:
        if self._message_fd is None:
            raise OSError("message already closed")
        await _write_all(self._message_fd, data)

    async def finish(self, envelope_wire: bytes) -> QueueResult:
        try:
            self._close("_message_fd")
            assert self._envelope_fd is not None
            await _write_all(self._envelope_fd, envelope_wire)
            self._close("_envelope_fd")
        except OSError:
            # the program quit early (a filter refusing the message does): its
            # exit code is the answer, as qmail reads it
            self._close("_message_fd")
            self._close("_envelope_fd")
        self._reaped = True
        return result_of_exit(await wait_exit(self.pid, QQ_TIMEOUT_S))

    def abort(self) -> None:
        # EOF without an envelope: qmail-queue exits 54 and queues nothing
        self._close("_message_fd")
        self._close("_envelope_fd")
        if not self._reaped:
            self._reaped = True
            with contextlib.suppress(RuntimeError):  # no loop: the process is ending
                task = asyncio.get_running_loop().create_task(wait_exit(self.pid, 60.0))
                _REAPERS.add(task)
                task.add_done_callback(_REAPERS.discard)


class ProgramQueue:
    """A Queue (smtpd.policy) that runs argv for each message."""

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.argv = tuple(argv)
        self.env = env

    async def open(self) -> ProgramSubmission:
        return ProgramSubmission.open(self.argv, self.env)
