"""$QMAILQUEUE: hand the message to another qmail-queue program (netqmail).

The program gets the message on fd 0 and the envelope on fd 1, and answers
with qmail-queue's exit codes (qmail-protocols §1.1), read as qmail's
qmail_close reads them (ipc.qmailqueue, shared with smtpd). Used for
qmail-qmqpc, filters and other queue front ends placed before the real queue.
"""

from __future__ import annotations

import os
import subprocess

from pyqmail.ipc.qmailqueue import result_of_exit
from pyqmail.ipc.queue_proto import QueueResult
from pyqmail.unix import durable


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
        return result_of_exit(self._proc.wait())
