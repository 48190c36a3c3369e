"""A stored message -> a POP3 multi-line body (RFC 1939 §3), streamed.

Lines end in LF (as qmail stores them) or CRLF; each goes out with CRLF,
a leading "." is doubled, and the body ends with ".\\r\\n". For TOP
(RFC 1939 §7) only the header, the blank line and the first N body lines
go out; ``done`` then tells the caller to stop reading the file.
"""

from __future__ import annotations

MAX_PENDING_BYTES = 65536  # a longer line goes out in pieces, never buffered whole


class Stuffer:
    def __init__(self, body_lines: int | None = None) -> None:
        self.body_lines = body_lines
        self.done = False
        self._pending = b""
        self._line_start = True
        self._in_headers = True
        self._count = 0

    def _line(self, line: bytes, out: list[bytes]) -> None:
        whole = self._line_start
        if whole and line.startswith(b"."):
            out.append(b".")
        out.append(line)
        out.append(b"\r\n")
        self._line_start = True
        if self.body_lines is None:
            return
        if self._in_headers:
            if whole and not line:
                self._in_headers = False
                self.done = self.body_lines == 0
        else:
            self._count += 1
            self.done = self._count >= self.body_lines

    def _stopped(self) -> bool:
        return self.done

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        out: list[bytes] = []
        buf = self._pending + data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            end = nl - 1 if nl > start and buf[nl - 1] == 0x0D else nl
            self._line(buf[start:end], out)
            start = nl + 1
            if self._stopped():  # a method: _line() may have changed self.done
                self._pending = b""
                return b"".join(out)
        rest = buf[start:]
        if len(rest) > MAX_PENDING_BYTES:
            # keep the last byte: it may be the CR of a CRLF split across reads
            if self._line_start and rest.startswith(b"."):
                out.append(b".")
            out.append(rest[:-1])
            self._line_start = False
            rest = rest[-1:]
        self._pending = rest
        return b"".join(out)

    def finish(self) -> bytes:
        """The rest and the terminating ".\\r\\n" (a last line without LF gets CRLF)."""
        out: list[bytes] = []
        if not self.done and (self._pending or not self._line_start):
            self._line(self._pending, out)
        self._pending = b""
        self.done = True
        out.append(b".\r\n")
        return b"".join(out)


def stuff_message(data: bytes, body_lines: int | None = None) -> bytes:
    s = Stuffer(body_lines)
    return s.feed(data) + s.finish()
