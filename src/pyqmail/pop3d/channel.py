"""A connection as two fds, read and written with deadlines, TLS optional.

The same class serves tcpserver's fd 0 / fd 1 (sockets or pipes) and a
socket accepted by the built-in listener (one fd both ways). TLS runs over
ssl.SSLObject and memory BIOs, so it needs no socket either.
"""

from __future__ import annotations

import contextlib
import os
import select
import ssl

READ_BYTES = 65536


class Timeout(Exception):
    """The peer stayed silent (or would not read) past the deadline."""


class Channel:
    def __init__(self, rfd: int, wfd: int, timeout: float) -> None:
        self.rfd, self.wfd, self.timeout = rfd, wfd, timeout
        self._tls: ssl.SSLObject | None = None
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.raw_eof = False
        for fd in {rfd, wfd}:
            with contextlib.suppress(OSError):
                os.set_blocking(fd, False)

    @property
    def tls(self) -> bool:
        return self._tls is not None

    def restore_blocking(self) -> None:
        """Before handing the fds to a program that expects blocking I/O."""
        for fd in {self.rfd, self.wfd}:
            with contextlib.suppress(OSError):
                os.set_blocking(fd, True)

    # -- raw fds -----------------------------------------------------------

    def _wait(self, fd: int, write: bool) -> None:
        r, w = ([], [fd]) if write else ([fd], [])
        ready = select.select(r, w, [], self.timeout)
        if not any(ready):
            raise Timeout

    def _raw_read(self) -> bytes:
        while True:
            try:
                return os.read(self.rfd, READ_BYTES)
            except BlockingIOError:
                self._wait(self.rfd, write=False)
            except ConnectionResetError:
                return b""

    def _raw_write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.wfd, view) :]
            except BlockingIOError:
                self._wait(self.wfd, write=True)

    def _flush_tls(self) -> None:
        pending = self._out.read()
        if pending:
            self._raw_write(pending)

    # -- what sessions use ---------------------------------------------------

    def read(self) -> bytes:
        """Some bytes; b"" at EOF. Raises Timeout, OSError, ssl.SSLError."""
        if self._tls is None:
            return self._raw_read()
        while True:
            try:
                return self._tls.read(READ_BYTES)
            except ssl.SSLWantReadError:
                self._flush_tls()
                if self.raw_eof:
                    return b""
                self._feed_tls()
            except ssl.SSLZeroReturnError:
                return b""

    def _feed_tls(self) -> None:
        raw = self._raw_read()
        if raw:
            self._in.write(raw)
        else:
            self.raw_eof = True
            self._in.write_eof()

    def read_some(self) -> bytes | None:
        """One raw read's worth, possibly b"" (TLS record incomplete); None at EOF.

        For relaying: call only when rfd is readable (or tls_pending()).
        """
        if self._tls is None:
            return self._raw_read() or None
        if not self._tls.pending():
            self._feed_tls()
        try:
            return self._tls.read(READ_BYTES)
        except ssl.SSLWantReadError:
            self._flush_tls()
            return None if self.raw_eof else b""
        except ssl.SSLZeroReturnError:
            return None

    def tls_pending(self) -> bool:
        return self._tls is not None and self._tls.pending() > 0

    def write(self, data: bytes) -> None:
        if self._tls is None:
            self._raw_write(data)
            return
        self._tls.write(data)
        self._flush_tls()

    def start_tls(self, ctx: ssl.SSLContext) -> None:
        """Server side handshake; raises ssl.SSLError, Timeout, ConnectionError."""
        tls = ctx.wrap_bio(self._in, self._out, server_side=True)
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush_tls()
                raw = self._raw_read()
                if not raw:
                    raise ConnectionError("EOF during the TLS handshake") from None
                self._in.write(raw)
        self._flush_tls()
        self._tls = tls

    def close_tls(self) -> None:
        """Best-effort close_notify; never raises."""
        if self._tls is not None:
            with contextlib.suppress(ssl.SSLError, OSError, Timeout):
                self._tls.unwrap()
            with contextlib.suppress(OSError, Timeout):
                self._flush_tls()
