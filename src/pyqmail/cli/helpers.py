"""What qmail's .qmail helper programs share: env, the child program, the queue.

The helpers (forward, condredirect, bouncesaying, except, preline) run under
qmail-local: fd 0 is the message as a seekable file, the environment holds
SENDER, NEWSENDER, DTLINE... (qmail-files §5.5). Messages they send go to the
queue writer like qmail-queue's (no qmail-inject: the header is not touched).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys

from pyqmail.config import Home
from pyqmail.formats import envelope as env_fmt
from pyqmail.ipc.queue_proto import submit_sync
from pyqmail.unix.readall import TooLarge, read_all

EXIT_PERM, EXIT_TEMP = 100, 111
MAX_MESSAGE_BYTES = 1 << 31
TEMP_ERRNOS = {errno.EAGAIN, errno.EINTR, errno.EIO, errno.ENOMEM, errno.ETIMEDOUT, errno.ENFILE}


class Fatal(Exception):
    """Ends the program: message on stderr, qmail's exit code."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def fail(prog: str, exc: Fatal) -> int:
    print(f"{prog}: fatal: {exc.text}" if exc.code else exc.text, file=sys.stderr)
    return exc.code


def need_env(name: str) -> bytes:
    value = os.environb.get(name.encode())
    if value is None:
        raise Fatal(EXIT_PERM, f"{name} not set")
    return value


def read_message() -> bytes:
    """fd 0 from its start (qmail-local hands a seekable file; a pipe is read as is)."""
    try:
        os.lseek(0, 0, os.SEEK_SET)
    except OSError as exc:
        if exc.errno != errno.ESPIPE:
            raise Fatal(EXIT_TEMP, f"unable to rewind message: {exc.strerror}") from exc
    try:
        return read_all(0, MAX_MESSAGE_BYTES)
    except TooLarge as exc:
        raise Fatal(EXIT_TEMP, "message too large") from exc


def run_child(argv: list[str]) -> int:
    """Run argv on our fd 0 (rewound); its exit code, as qmail's helpers see it.

    exec failing for a temporary reason -> 111, otherwise 100; a crash -> Fatal 111.
    """
    try:
        os.lseek(0, 0, os.SEEK_SET)
    except OSError:
        pass  # not seekable: the child reads what is left, as in qmail
    try:
        proc = subprocess.run(argv, check=False)
    except OSError as exc:
        return EXIT_TEMP if exc.errno in TEMP_ERRNOS else EXIT_PERM
    if proc.returncode < 0:
        raise Fatal(EXIT_TEMP, "child crashed")
    return proc.returncode


def queue(sender: bytes, recipients: list[bytes], message: bytes) -> int:
    """Queue through the writer; the new message id. Fatal 100/111 as qmail-queue says."""
    try:
        wire = env_fmt.format_wire(env_fmt.Envelope(sender, tuple(recipients)))
    except ValueError as exc:
        raise Fatal(EXIT_PERM, f"bad address: {exc}") from exc
    res = submit_sync(Home.from_env().writer_socket, b"local", message, wire)
    if res.status == "K":
        return res.msg_id
    raise Fatal(EXIT_PERM if res.status == "D" else EXIT_TEMP, res.text)
