"""qmail's envelope records: ``F<sender>\\0`` then ``T<rcpt>\\0``... then ``\\0``.

The queue file form (todo/N) also carries ``u<uid>\\0p<pid>\\0`` in front and
has no final extra NUL, exactly like qmail-queue writes it.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_ADDRESS_BYTES = 1000  # qmail-queue exits 11 for longer addresses
MAX_RECIPIENTS = 100_000


class EnvelopeError(ValueError):
    """Malformed envelope; ``code`` is the qmail-queue exit code it maps to."""

    def __init__(self, why: str, code: int) -> None:
        super().__init__(why)
        self.code = code


@dataclass(frozen=True, slots=True)
class Envelope:
    sender: bytes
    recipients: tuple[bytes, ...]


def _check_address(addr: bytes) -> None:
    if len(addr) >= MAX_ADDRESS_BYTES:
        raise EnvelopeError("envelope address too long", 11)


def parse_wire(data: bytes, *, max_rcpts: int = MAX_RECIPIENTS) -> Envelope:
    """Parse the qmail-queue fd 1 form (ends with an extra NUL).

    Raises EnvelopeError with code 54 when the final NUL is missing (EOF too
    early), 91 for a record that is not F/T, 11 for an overlong address.
    """
    if not data.endswith(b"\0\0") and data != b"\0":
        raise EnvelopeError("envelope truncated", 54)
    if not data.startswith(b"F"):
        raise EnvelopeError("envelope does not start with F", 91)
    records = data[:-1].split(b"\0")[:-1]
    sender = records[0][1:]
    _check_address(sender)
    rcpts: list[bytes] = []
    for rec in records[1:]:
        if not rec.startswith(b"T"):
            raise EnvelopeError("envelope record is not T", 91)
        if len(rcpts) >= max_rcpts:
            raise EnvelopeError("too many recipients", 11)
        _check_address(rec[1:])
        rcpts.append(rec[1:])
    return Envelope(sender, tuple(rcpts))


def format_wire(env: Envelope) -> bytes:
    parts = [b"F" + env.sender + b"\0"]
    parts.extend(b"T" + r + b"\0" for r in env.recipients)
    parts.append(b"\0")
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class QueuedEnvelope:
    uid: int
    pid: int
    sender: bytes
    recipients: tuple[bytes, ...]


def format_todo(env: QueuedEnvelope) -> bytes:
    parts = [b"u%d\0p%d\0F%s\0" % (env.uid, env.pid, env.sender)]
    parts.extend(b"T" + r + b"\0" for r in env.recipients)
    return b"".join(parts)


def parse_todo(data: bytes) -> QueuedEnvelope:
    if not data.endswith(b"\0"):
        raise EnvelopeError("todo file truncated", 91)
    uid = pid = -1
    sender: bytes | None = None
    rcpts: list[bytes] = []
    for rec in data[:-1].split(b"\0"):
        kind, value = rec[:1], rec[1:]
        if kind == b"u" and value.isdigit():
            uid = int(value)
        elif kind == b"p" and value.isdigit():
            pid = int(value)
        elif kind == b"F" and sender is None:
            sender = value
        elif kind == b"T" and sender is not None:
            rcpts.append(value)
        else:
            raise EnvelopeError(f"bad todo record {rec[:20]!r}", 91)
    if sender is None:
        raise EnvelopeError("todo file has no sender", 91)
    return QueuedEnvelope(uid, pid, sender, tuple(rcpts))


def parse_channel(data: bytes) -> list[tuple[bool, bytes]]:
    """local/S/N and remote/S/N: records ``T<addr>\\0`` or ``D<addr>\\0`` (done)."""
    out: list[tuple[bool, bytes]] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\0", pos)
        if end < 0:
            break  # a record torn by a crash while appending: not yet committed
        kind = data[pos : pos + 1]
        if kind not in (b"T", b"D"):
            raise EnvelopeError(f"bad channel record at byte {pos}", 91)
        out.append((kind == b"D", data[pos + 1 : end]))
        pos = end + 1
    return out


def channel_offsets(data: bytes) -> list[int]:
    """Byte offset of each record's first byte (the T/D mark qmail-send flips)."""
    offsets = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\0", pos)
        if end < 0:
            break
        offsets.append(pos)
        pos = end + 1
    return offsets
