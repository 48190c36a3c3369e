"""The dead-host table, queue/lock/tcpto, as qmail-tcpto keeps it (qmail-files §6.7).

qmail's rules, kept: only connect *timeouts* count; a connect that succeeds
or is refused resets the count of an address already in the table; a
timeout less than 2 minutes after the previous one is not counted; the
count stops at 10; an address with a count of 2 or more is skipped until
(60 + pid mod 32) * 64 seconds after its last timeout; a full table reuses
the record with the smallest time + count * 1024; rspawn zeroes the table
when it starts and ``qmail-tcpok`` zeroes it on demand.

qmail's records hold 4-byte IPv4 addresses. Ours hold both families, so the
format is wider (the file is private to pyqmail's tools):
``RECORDS`` records of 32 bytes: bytes 0-15 the address (IPv4 as
IPv4-mapped IPv6), byte 16 the count, bytes 24-31 the time of the last
timeout (little-endian seconds). An all-zero record is free. Every
read-modify-write holds an exclusive flock on the file.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import struct
import time
from dataclasses import dataclass

RECORDS = 128
RECORD_BYTES = 32
TABLE_BYTES = RECORDS * RECORD_BYTES
MAX_COUNT = 10
SKIP_AFTER = 2
RECOUNT_S = 120
_REC = struct.Struct("<16sB7xQ")


@dataclass(frozen=True, slots=True)
class Entry:
    ip: str
    count: int
    when: int


def _packed(ip: str) -> bytes:
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return ipaddress.IPv6Address("::ffff:" + str(addr)).packed
    return addr.packed


def _text(packed: bytes) -> str:
    addr = ipaddress.IPv6Address(packed)
    return str(addr.ipv4_mapped or addr)


def skip_window_s(pid: int) -> int:
    return (60 + (pid & 31)) << 6


class TcpTo:
    def __init__(self, path: str) -> None:
        self.path = path

    def _open(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def _read(self, fd: int) -> bytearray:
        data = bytearray(os.pread(fd, TABLE_BYTES, 0))
        data.extend(bytes(TABLE_BYTES - len(data)))
        return data

    def clear(self) -> None:
        try:
            fd = self._open()
        except PermissionError:
            # left by another user (root ran qmail-tcpok first): lock/ is ours to rewrite
            os.unlink(self.path)
            fd = self._open()
        try:
            os.pwrite(fd, bytes(TABLE_BYTES), 0)
            os.ftruncate(fd, TABLE_BYTES)
        finally:
            os.close(fd)

    def entries(self) -> list[Entry]:
        try:
            fd = self._open()
        except FileNotFoundError:
            return []
        try:
            data = self._read(fd)
        finally:
            os.close(fd)
        out = []
        for i in range(RECORDS):
            packed, count, when = _REC.unpack_from(data, i * RECORD_BYTES)
            if any(packed):
                out.append(Entry(_text(packed), count, when))
        return out

    def dead(self, ip: str, now: float | None = None) -> bool:
        """True: skip this address for now (it timed out repeatedly and recently).

        An unreadable table skips nothing: it only ever saves time.
        """
        now = time.time() if now is None else now
        try:
            entries = self.entries()
        except OSError:
            return False
        for e in entries:
            if e.ip == ip:
                return e.count >= SKIP_AFTER and now < e.when + skip_window_s(os.getpid())
        return False

    def record(self, ip: str, timed_out: bool, now: float | None = None) -> None:
        """After a connect attempt: timed_out False for success or refusal."""
        now_s = int(time.time() if now is None else now)
        key = _packed(ip)
        try:
            fd = self._open()
        except OSError:
            return  # an unwritable table costs only the time it would have saved
        try:
            data = self._read(fd)
            best, best_score = 0, None
            for i in range(RECORDS):
                packed, count, when = _REC.unpack_from(data, i * RECORD_BYTES)
                if packed == key:
                    if not timed_out:
                        if count:
                            os.pwrite(fd, _REC.pack(key, 0, when), i * RECORD_BYTES)
                    elif now_s - when >= RECOUNT_S:
                        os.pwrite(
                            fd, _REC.pack(key, min(MAX_COUNT, count + 1), now_s), i * RECORD_BYTES
                        )
                    return
                score = when + (count << 10) if any(packed) else -1
                if best_score is None or score < best_score:
                    best, best_score = i, score
            if timed_out:
                os.pwrite(fd, _REC.pack(key, 1, now_s), best * RECORD_BYTES)
        finally:
            os.close(fd)
