"""predate and datemail: a Date: line in the local time zone, then the message.

predate child args: pipes ``Date: D Mon YYYY HH:MM:SS +hhmm`` and fd 0 into
child; exits with the child's code (100 usage, 111 trouble or a crashed
child). datemail args: sendmail with such a Date: line on top, so
qmail-inject keeps it instead of adding its GMT one.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from typing import BinaryIO

from pyqmail.config import Home

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
COPY_BYTES = 1 << 16


def date_line(local: time.struct_time) -> bytes:
    """predate's field: local wall clock and its offset from GMT, rounded to minutes."""
    offset = local.tm_gmtoff or 0
    sign = "-" if offset < 0 else "+"
    minutes = (abs(offset) + 30) // 60
    return (
        f"Date: {local.tm_mday} {_MONTHS[local.tm_mon - 1]} {local.tm_year} "
        f"{local.tm_hour:02d}:{local.tm_min:02d}:{local.tm_sec:02d} "
        f"{sign}{minutes // 60:02d}{minutes % 60:02d}\n"
    ).encode()


class _Prefixed(io.RawIOBase):
    """A first chunk of bytes, then another stream: stdin with a line on top."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def prefixed(head: bytes, rest: BinaryIO) -> BinaryIO:
    return io.BufferedReader(_Prefixed(head, rest), COPY_BYTES)


def main() -> int:
    argv = sys.argv[1:]
    if not argv:
        print("predate: usage: predate child", file=sys.stderr)
        return 100
    try:
        child = subprocess.Popen(argv, stdin=subprocess.PIPE)
    except OSError as exc:
        print(f"predate: fatal: unable to run {argv[0]}: {exc.strerror}", file=sys.stderr)
        return 111
    assert child.stdin is not None
    try:
        child.stdin.write(date_line(time.localtime()))
        while chunk := sys.stdin.buffer.read(COPY_BYTES):
            child.stdin.write(chunk)
    except BrokenPipeError:
        pass  # the child stopped reading; its exit code tells the rest
    finally:
        try:
            child.stdin.close()
        except BrokenPipeError:
            pass
    code = child.wait()
    if code < 0:
        print("predate: fatal: child crashed", file=sys.stderr)
        return 111
    return code


def datemail_main() -> int:
    from pyqmail.inject import sendmail

    stdin = prefixed(date_line(time.localtime()), sys.stdin.buffer)
    env = dict(os.environb)
    return sendmail.run(["sendmail", *sys.argv[1:]], env, stdin, sys.stdout.buffer, Home.from_env())


if __name__ == "__main__":
    raise SystemExit(main())
