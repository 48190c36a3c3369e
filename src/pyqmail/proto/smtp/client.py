"""Client side of SMTP, sans-IO: reply parsing and message encoding.

The asyncio code in remote/ feeds received bytes in and writes what these
functions produce; nothing here touches a socket.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_REPLY_LINE = 4096
MAX_REPLY_LINES = 200


class ReplyError(ValueError):
    """The server's bytes are not an SMTP reply."""


@dataclass(frozen=True, slots=True)
class ServerReply:
    code: int
    lines: tuple[bytes, ...]

    @property
    def text(self) -> bytes:
        return b"\n".join(b"%d%s" % (self.code, b" " + ln if ln else b"") for ln in self.lines)

    @property
    def kind(self) -> int:
        return self.code // 100


class ReplyParser:
    """Feed bytes, take whole (possibly multi-line) replies."""

    def __init__(self) -> None:
        self._buf = b""
        self._lines: list[bytes] = []

    @property
    def buffered(self) -> bool:
        """Bytes of an unfinished reply are waiting (must be none before STARTTLS)."""
        return bool(self._buf or self._lines)

    def feed(self, data: bytes) -> list[ServerReply]:
        self._buf += data
        out: list[ServerReply] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_REPLY_LINE:
                    raise ReplyError("reply line too long")
                return out
            line, self._buf = self._buf[:nl].rstrip(b"\r"), self._buf[nl + 1 :]
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                raise ReplyError(f"not a reply line: {line[:40]!r}")
            self._lines.append(line[4:])
            if len(self._lines) > MAX_REPLY_LINES:
                raise ReplyError("reply has too many lines")
            if line[3:4] != b"-":
                out.append(ServerReply(int(line[:3]), tuple(self._lines)))
                self._lines = []


def ehlo_keywords(reply: ServerReply) -> dict[bytes, bytes]:
    """EHLO extensions (upper-cased keyword -> parameters); first line is the greeting."""
    out: dict[bytes, bytes] = {}
    for line in reply.lines[1:]:
        word, _, params = line.partition(b" ")
        out[word.upper()] = params
    return out


def dot_stuff(message: bytes) -> bytes:
    """LF-terminated message -> CRLF wire form with dots doubled and the final '.'.

    Lines already ending in CRLF are not doubled to CR CR LF (a known
    qmail-remote wart, fixed in notqmail).
    """
    if not message:
        return b".\r\n"
    # whole-buffer replaces, not a loop over lines: this runs for every
    # message rspawn sends. One CR before each LF goes (and one at the very
    # end of an unterminated last line), then every line gets CRLF.
    text = message[:-1] if message.endswith(b"\n") else message
    text = text.replace(b"\r\n", b"\n")
    if text.endswith(b"\r"):
        text = text[:-1]
    text = text.replace(b"\n.", b"\n..")
    if text.startswith(b"."):
        text = b"." + text
    return text.replace(b"\n", b"\r\n") + b"\r\n.\r\n"


def path(addr: bytes) -> bytes:
    """``<addr>`` for MAIL/RCPT, quoting a local part that needs it."""
    local, at, dom = addr.rpartition(b"@")
    if at and local and any(c in local for c in b' "\\()<>,;:[]'):
        local = b'"' + local.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        return b"<" + local + b"@" + dom + b">"
    return b"<" + addr + b">"
