"""Netstrings: ``<decimal length>:<bytes>,`` (cr.yp.to/proto/netstrings.txt).

Used on every pipe and socket between our own processes, and by QMTP/QMQP.
"""

from __future__ import annotations


class NetstringError(ValueError):
    """The bytes can never become a valid netstring."""


def encode(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


def parse_length(buf: bytes | bytearray, *, limit: int, pos: int = 0) -> tuple[int, int] | None:
    """The length field at buf[pos:]: (size, offset of the payload in buf).

    None while buf may still grow into a valid field; NetstringError as soon
    as it cannot. The length is checked against limit before anything is
    allocated; leading zeros are refused, as the spec says.
    """
    width = len(str(limit))
    colon = buf.find(b":", pos, pos + width + 1)
    digits = bytes(buf[pos : pos + width + 1] if colon < 0 else buf[pos:colon])
    if (digits and not digits.isdigit()) or len(digits) > width:
        raise NetstringError("bad length field")
    # Refuse as soon as the length can never become valid, colon or not:
    # a leading zero ("01") or a value already over the limit only grows.
    if len(digits) > 1 and digits[:1] == b"0":
        raise NetstringError("bad length field")
    if digits and int(digits) > limit:
        raise NetstringError(f"{int(digits)} bytes is over the limit of {limit}")
    if colon < 0:
        return None
    if not digits:
        raise NetstringError("bad length field")
    return int(digits), colon + 1


def frame_at(buf: bytes | bytearray, pos: int, *, limit: int) -> tuple[int, int] | None:
    """Where the netstring at buf[pos:] keeps its payload: (start, end).

    The next netstring begins at end + 1. None while buf may still grow into
    a whole netstring; NetstringError as soon as it cannot. The one
    incremental splitter: decode_one, ipc's FrameBuffer and the queue
    protocol's buffers all cut frames with it.
    """
    got = parse_length(buf, limit=limit, pos=pos)
    if got is None:
        return None
    size, start = got
    end = start + size
    if len(buf) <= end:
        return None
    if buf[end] != 0x2C:  # ","
        raise NetstringError("missing comma")
    return start, end


def decode_one(buf: bytes, *, limit: int) -> tuple[bytes, bytes] | None:
    """Split one netstring off the front of buf: (payload, rest).

    None while buf may still grow into a valid netstring; NetstringError as
    soon as it cannot (see parse_length for the length field).
    """
    got = frame_at(buf, 0, limit=limit)
    if got is None:
        return None
    start, end = got
    return buf[start:end], buf[end + 1 :]


def decode_all(buf: bytes, *, limit: int, max_items: int) -> list[bytes]:
    """Decode a buffer that must hold nothing but complete netstrings."""
    items: list[bytes] = []
    while buf:
        if len(items) >= max_items:
            raise NetstringError(f"more than {max_items} items")
        got = decode_one(buf, limit=limit)
        if got is None:
            raise NetstringError("truncated netstring")
        item, buf = got
        items.append(item)
    return items
