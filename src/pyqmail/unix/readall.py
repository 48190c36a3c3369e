"""Reading a descriptor to its end, within a bound: fd 0 and fd 1 of the
qmail-queue interface, fd 0 of the .qmail helpers."""

from __future__ import annotations

import os

CHUNK = 1 << 16


class TooLarge(OSError):
    """More than the limit on the descriptor; nothing beyond it was kept."""


def read_all(fd: int, limit: int) -> bytes:
    """Everything up to end of file; TooLarge past ``limit`` bytes, OSError as read says."""
    parts: list[bytes] = []
    total = 0
    while chunk := os.read(fd, CHUNK):
        total += len(chunk)
        if total > limit:
            raise TooLarge(f"more than {limit} bytes on fd {fd}")
        parts.append(chunk)
    return b"".join(parts)
