"""$QMAILQUEUE: hand the message to another qmail-queue program (netqmail).

The program gets the message on fd 0 and the envelope on fd 1, and answers
with qmail-queue's exit codes (qmail-protocols §1.1), translated here into
the texts qmail's qmail_close gives them. Used for qmail-qmqpc, filters and
other queue front ends placed before the real queue.
"""

from __future__ import annotations

import os
import subprocess

from pyqmail.ipc.queue_proto import QueueResult
from pyqmail.unix import durable

_TEXTS = {
    11: "Denvelope address too long for qq (#5.1.3)",
    115: "Denvelope address too long for qq (#5.1.3)",
    31: "Dmail server permanently rejected message (#5.3.0)",
    51: "Zqq out of memory (#4.3.0)",
    52: "Zqq timeout (#4.3.0)",
    53: "Zqq write error or disk full (#4.3.0)",
    54: "Zqq read error (#4.3.0)",
    55: "Zqq unable to read configuration (#4.3.0)",
    56: "Zqq trouble making network connection (#4.3.0)",
    61: "Zqq trouble in home directory (#4.3.0)",
    62: "Zqq trouble creating files in queue (#4.3.0)",
    63: "Zqq trouble creating files in queue (#4.3.0)",
    64: "Zqq trouble creating files in queue (#4.3.0)",
    65: "Zqq trouble creating files in queue (#4.3.0)",
    66: "Zqq trouble creating files in queue (#4.3.0)",
    71: "Zmail server temporarily rejected message (#4.3.0)",
    72: "Zconnection to mail server timed out (#4.4.1)",
    73: "Zconnection to mail server rejected (#4.4.1)",
    74: "Zcommunication with mail server failed (#4.4.2)",
    81: "Zqq internal bug (#4.3.0)",
    91: "Zqq internal bug (#4.3.0)",
    120: "Zunable to exec qq (#4.3.0)",
}


def result_for(code: int) -> QueueResult:
    """qmail_close's reading of a qmail-queue exit code."""
    if code == 0:
        return QueueResult("K", "ok")
    text = _TEXTS.get(code)
    if text is None:
        text = (
            "Dqq permanent problem (#5.3.0)"
            if 11 <= code <= 40
            else "Zqq temporary problem (#4.3.0)"
        )
    return QueueResult(text[0], text[1:])


class ProgramSubmission:
    """The submission interface of SyncSubmission, over a qmail-queue program."""

    def __init__(self, program: str) -> None:
        envelope_read, self._envelope_write = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [program], stdin=subprocess.PIPE, stdout=envelope_read, close_fds=True
            )
        finally:
            os.close(envelope_read)
        self._failed = False

    def write(self, data: bytes) -> None:
        assert self._proc.stdin is not None
        if data and not self._failed:
            try:
                self._proc.stdin.write(data)
            except BrokenPipeError:
                self._failed = True  # its exit code says why

    def finish(self, envelope_wire: bytes) -> QueueResult:
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            if not self._failed:
                durable.write_all(self._envelope_write, envelope_wire)
        except OSError:
            pass
        finally:
            os.close(self._envelope_write)
        code = self._proc.wait()
        if code < 0:
            return QueueResult("Z", "qq crashed (#4.3.0)")
        return result_for(code)
