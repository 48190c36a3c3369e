"""send's operator channel (queue/lock/send.sock): ``pyqmail queue`` talks to send here.

Client -> send, one netstring: ``QCT1\\0<command>[\\0<message id>]``; commands
``retry`` (no id: every message, like SIGALRM), ``hold``, ``release``,
``delete``, ``when`` (a message's schedule, for ``show``).
send -> client: netstrings ``O<text>`` (lines for standard output), then one
final ``K<text>`` (done), ``D<text>`` (refused: no such message...) or
``Z<text>`` (try again); then send closes. The socket is mode 0600 and send
also checks the peer's uid (its own, or root).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from pyqmail.formats import netstring
from pyqmail.ipc.frames import MAX_FRAME_BYTES, pack

MAGIC = b"QCT1"
COMMANDS = (b"retry", b"hold", b"release", b"delete", b"when")
REQUEST_LIMIT = 200
MAX_REPLY_FRAMES = 10000


@dataclass(frozen=True, slots=True)
class ControlReply:
    status: str  # "K", "D" or "Z"
    text: str
    output: list[str] = field(default_factory=list)


def parse_request(payload: bytes) -> tuple[bytes, int | None] | str:
    """(command, id or None), or the reason the request is refused."""
    fields = payload.split(b"\0")
    if fields[0] != MAGIC or len(fields) not in (2, 3) or fields[1] not in COMMANDS:
        return "unknown request"
    if len(fields) == 2:
        return fields[1], None
    if not fields[2].isdigit() or len(fields[2]) > 20:
        return "message ids are decimal numbers"
    return fields[1], int(fields[2])


def format_request(command: str, msg_id: int | None) -> bytes:
    fields = [MAGIC, command.encode()]
    if msg_id is not None:
        fields.append(b"%d" % msg_id)
    return pack(*fields)


def request(path: str, command: str, msg_id: int | None, timeout: float = 30.0) -> ControlReply:
    """One blocking round trip; a send that is down or dies answers Z."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return ControlReply("Z", f"send is not running (nothing listens on {path})")
        sock.sendall(format_request(command, msg_id))
        buf = b""
        output: list[str] = []
        while len(output) < MAX_REPLY_FRAMES:
            got = netstring.decode_one(buf, limit=MAX_FRAME_BYTES)
            if got is None:
                data = sock.recv(65536)
                if not data:
                    return ControlReply("Z", "send closed the connection early", output)
                buf += data
                continue
            payload, buf = got
            kind, text = payload[:1], payload[1:].decode("utf-8", "replace")
            if kind == b"O":
                output.append(text)
            elif kind in (b"K", b"D", b"Z"):
                return ControlReply(kind.decode(), text, output)
            else:
                return ControlReply("Z", "send's reply is garbled", output)
        return ControlReply("Z", "send's reply is too long", output)
    except (OSError, netstring.NetstringError) as exc:
        return ControlReply("Z", f"trouble talking to send: {exc}")
    finally:
        sock.close()
