"""lspawn's delivery workers: forked once per recipient uid, reused for many deliveries.

Forking a whole Python process for every local delivery cost more CPU than
the delivery itself. A worker is forked from lspawn (already holding every
module it needs), drops to one uid for good, and then runs local deliveries
for that uid one at a time: a job arrives as one SOCK_SEQPACKET record,
the result goes back as one record. lspawn retires a worker that has been
idle for a while, or when another uid needs its slot, by closing its end;
the worker exits at that EOF. A worker that dies mid-delivery (SIGKILL)
shows up as EOF with a job assigned, which lspawn reports as a crash: send
retries with the "maybe done" flag and the Maildir code finds the copy.

Records are sequences of netstrings; both sides bound every field.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import traceback
from collections.abc import Iterable
from dataclasses import dataclass

from pyqmail.config import Home
from pyqmail.formats import netstring
from pyqmail.formats.assign import UserMatch
from pyqmail.local.deliver import EXIT_TEMP, LocalJob, deliver
from pyqmail.unix.privs import drop_privileges

REPORT_LIMIT = 3000
MAX_RECORD = 64 * 1024
JOB_FIELDS = 11


@dataclass(frozen=True, slots=True)
class Request:
    """One local delivery, everything the worker needs to run it."""

    messpath: str
    sender: bytes
    rcpt: bytes
    key: str
    retry: bool
    user: UserMatch
    aliasempty: str


def _s(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _b(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def encode_request(req: Request) -> bytes:
    u = req.user
    fields = [
        _b(req.messpath),
        req.sender,
        req.rcpt,
        _b(req.key),
        b"1" if req.retry else b"0",
        _b(u.user),
        _b(u.home),
        _b(u.dash),
        _b(u.ext),
        _b(req.aliasempty),
        b"%d:%d" % (u.uid, u.gid),
    ]
    return b"".join(netstring.encode(f) for f in fields)


def decode_request(data: bytes) -> Request:
    fields = netstring.decode_all(data, limit=MAX_RECORD, max_items=JOB_FIELDS)
    if len(fields) != JOB_FIELDS:
        raise netstring.NetstringError(f"expected {JOB_FIELDS} fields, got {len(fields)}")
    messpath, sender, rcpt, key, retry, user, home, dash, ext, aliasempty, ids = fields
    uid, _, gid = ids.partition(b":")
    return Request(
        _s(messpath),
        sender,
        rcpt,
        _s(key),
        retry == b"1",
        UserMatch(_s(user), int(uid), int(gid), _s(home), _s(dash), _s(ext)),
        _s(aliasempty),
    )


def encode_result(code: int, text: bytes) -> bytes:
    return netstring.encode(b"%d" % code) + netstring.encode(text[: REPORT_LIMIT + 1])


def decode_result(data: bytes) -> tuple[int, bytes]:
    """(exit code, report text) from a worker; a mangled record is a crash."""
    try:
        fields = netstring.decode_all(data, limit=MAX_RECORD, max_items=2)
        if len(fields) != 2 or not fields[0].isdigit() or len(fields[0]) > 3:
            raise ValueError("bad result record")
    except ValueError:
        return EXIT_TEMP, b"qmail-local sent a mangled report."
    return int(fields[0]), fields[1]


def run_worker(sock: socket.socket, home: Home, uid: int, gid: int) -> None:
    """The worker's whole life; never returns (os._exit)."""
    code = EXIT_TEMP
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if uid != os.geteuid():
            drop_privileges(uid, gid)
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, MAX_RECORD, 1)
            except OSError:
                data, fds = b"", []
            if not data:
                code = 0
                return  # lspawn retired us, or is gone
            try:
                rc, text, crashed = _one_job(home, data, fds)
            finally:
                for fd in fds:
                    os.close(fd)
            sock.sendall(encode_result(rc, text))
            if crashed:
                return
    except BaseException:
        with contextlib.suppress(Exception):
            os.write(2, traceback.format_exc()[-REPORT_LIMIT:].encode())
    finally:
        os._exit(code)


def _one_job(home: Home, data: bytes, fds: list[int]) -> tuple[int, bytes, bool]:
    """(exit code, report, crashed) for one job; the message comes as an open fd.

    The fd is opened by lspawn before this worker's privileges were dropped:
    the recipient may not be able to open queue/mess itself.
    """
    try:
        req = decode_request(data)
    except ValueError as exc:
        return EXIT_TEMP, f"bad job from lspawn: {exc}".encode(), False
    if len(fds) != 1:
        return EXIT_TEMP, b"Unable to open message: no descriptor from lspawn. (#4.3.0)", False
    path = home.q("mess", req.messpath)
    job = LocalJob(path, req.sender, req.rcpt, req.key, req.retry, message_fd=fds[0])
    try:
        rc, text = deliver(home, job, req.user, req.aliasempty)
    except Exception:
        # a bug in delivery: defer this one, and start the next one from a
        # fresh fork rather than from whatever state it left behind
        return EXIT_TEMP, traceback.format_exc()[-REPORT_LIMIT:].encode(), True
    return rc, text.encode("utf-8", "replace"), False


def fork_worker(
    home: Home, uid: int, gid: int, close: Iterable[socket.socket]
) -> tuple[int, socket.socket]:
    """Fork a worker for uid/gid: (pid, lspawn's end of its socket).

    ``close`` are lspawn's own descriptors (listener, send connections,
    other workers' sockets) the child must not keep: a worker holding
    another worker's socket would hide that worker's death.
    """
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        with contextlib.suppress(BaseException):
            parent.close()
            for s in close:
                s.close()
        run_worker(child, home, uid, gid)
    child.close()
    return pid, parent
