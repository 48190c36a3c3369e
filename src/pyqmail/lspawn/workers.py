"""lspawn's delivery workers: forked once per recipient uid, reused for many deliveries.

Forking a whole Python process for every local delivery cost more CPU than
the delivery itself. A worker is forked from lspawn (already holding every
module it needs), drops to one uid for good, and then runs local deliveries
for that uid: a job arrives as one SOCK_SEQPACKET record with the message's
descriptor, each result goes back as one record, in the order the jobs came.

lspawn may queue several jobs on a busy worker. The worker takes all that
are waiting as one batch: Maildir-only deliveries in it share one group
commit (two syncs for the batch, not two per delivery), and none is reported
before its copy and name are durable. A delivery that runs a program (or
writes an mbox, or forwards) runs alone; the worker says SLOW first so that
lspawn stops queueing behind it.

lspawn retires a worker that has been idle for a while, or when another uid
needs its slot, by closing its end; the worker exits at that EOF. A worker
that dies mid-batch (SIGKILL) shows up as EOF with jobs unanswered, which
lspawn reports as crashes: send retries with the "maybe done" flag and the
Maildir code finds any copy that reached new/.

A job is one record of NUL-separated fields (see encode_request); results
are netstrings. Both sides bound every field.
"""

from __future__ import annotations

import array
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
from pyqmail.local import maildircommit
from pyqmail.local.deliver import EXIT_TEMP, Delivery, LocalJob, Started, complete, start
from pyqmail.unix.privs import drop_privileges

REPORT_LIMIT = 3000
MAX_RECORD = 64 * 1024
JOB_FIELDS = 11
# jobs a worker takes at once, and so commits as one group; also the most
# lspawn queues on one worker
BATCH_MAX = 16
# a record of results for a whole batch must fit in one SEQPACKET record
assert BATCH_MAX * (REPORT_LIMIT + 32) <= MAX_RECORD
FD_SIZE = array.array("i").itemsize
FDS_SPACE = socket.CMSG_SPACE(BATCH_MAX * FD_SIZE)  # one descriptor per job
SLOW = b"S"  # worker -> lspawn: the next delivery runs a program, or is not Maildir-only


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
    """The job as NUL-separated fields: none of them can hold a NUL (ValueError if one does).

    Addresses come from the queue's NUL-terminated envelope, and the rest
    are paths, names and numbers; splitting at NUL is one C call where
    netstrings cost the worker more than the rest of reading its job.
    """
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
    if any(b"\0" in f for f in fields):
        raise ValueError("a NUL byte in a delivery request field")
    return b"\0".join(fields)


def decode_request(data: bytes) -> Request:
    if len(data) > MAX_RECORD:
        raise ValueError(f"a job of {len(data)} bytes")
    fields = data.split(b"\0")
    if len(fields) != JOB_FIELDS:
        raise ValueError(f"expected {JOB_FIELDS} fields, got {len(fields)}")
    messpath, sender, rcpt, key, retry, user, home, dash, ext, aliasempty, ids = fields
    uid, colon, gid = ids.partition(b":")
    if not (colon and uid.isdigit() and gid.isdigit() and len(ids) <= 41):
        raise ValueError("bad uid:gid field")
    return Request(
        _s(messpath),
        sender,
        rcpt,
        _s(key),
        retry == b"1",
        UserMatch(_s(user), int(uid), int(gid), _s(home), _s(dash), _s(ext)),
        _s(aliasempty),
    )


def encode_result(code: int, text: bytes, grouped: bool = False) -> bytes:
    return (
        netstring.encode(b"%d" % code)
        + netstring.encode(text[: REPORT_LIMIT + 1])
        + netstring.encode(b"1" if grouped else b"0")
    )


def decode_results(data: bytes) -> list[tuple[int, bytes, bool]] | None:
    """[(exit code, report text, grouped)] from one worker record; None if mangled.

    A record holds the results of one or more jobs, in the order they were
    sent. grouped: the job was reported with its group (a Maildir-only
    delivery, or one that failed before delivering anything), not run alone
    after SLOW: a hint that this worker's next deliveries will be quick too.
    """
    try:
        fields = netstring.decode_all(data, limit=MAX_RECORD, max_items=3 * BATCH_MAX)
    except ValueError:
        return None
    if not fields or len(fields) % 3:
        return None
    out = []
    for i in range(0, len(fields), 3):
        code, text, grouped = fields[i : i + 3]
        if not code.isdigit() or len(code) > 3 or grouped not in (b"0", b"1"):
            return None
        out.append((int(code), text, grouped == b"1"))
    return out


Job = tuple[bytes, int]  # one job's fields, and its message's descriptor


class BadRecord(Exception):
    """A record from lspawn that is not jobs with one descriptor each."""


def encode_jobs(jobs: list[bytes]) -> bytes:
    """One record for several jobs (each from encode_request); their
    descriptors go with it, one per job, in the same order."""
    return b"".join(netstring.encode(j) for j in jobs)


def run_worker(sock: socket.socket, home: Home, uid: int, gid: int) -> None:
    """The worker's whole life; never returns (os._exit)."""
    code = EXIT_TEMP
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if uid != os.geteuid():
            drop_privileges(uid, gid)
        host = socket.gethostname()
        while True:
            jobs = _receive(sock, wait=True)
            if not jobs:
                code = 0
                return  # lspawn retired us, or is gone
            try:
                healthy = _run_batch(sock, home, host, jobs)
            finally:
                for _, fd in jobs:
                    os.close(fd)
            if not healthy:
                return
    except BaseException:
        with contextlib.suppress(Exception):
            os.write(2, traceback.format_exc()[-REPORT_LIMIT:].encode())
    finally:
        os._exit(code)


def _receive(sock: socket.socket, *, wait: bool) -> list[Job]:
    """The jobs waiting (first waiting for some, if wait); [] at EOF.

    Stops at BATCH_MAX: lspawn never has more unanswered on one worker.
    A record that is not what lspawn sends raises BadRecord: the worker
    exits and lspawn reports its jobs as crashed.
    """
    jobs: list[Job] = []
    flags = 0 if wait else socket.MSG_DONTWAIT
    while len(jobs) < BATCH_MAX:
        try:
            got = _recv_jobs(sock, flags)
        except BlockingIOError:
            break
        except OSError:
            got = None
        if got is None:
            break  # EOF: these still run, the next receive sees it again
        jobs.extend(got)
        flags = socket.MSG_DONTWAIT
    return jobs


def _recv_jobs(sock: socket.socket, flags: int) -> list[Job] | None:
    """The jobs of one record with their descriptors; None at EOF.

    (socket.recv_fds ignores flags before Python 3.12.)
    """
    data, ancdata, msg_flags, _addr = sock.recvmsg(MAX_RECORD, FDS_SPACE, flags)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % FD_SIZE
            fds.extend(array.array("i", payload[:usable]))
    try:
        if not data:
            return None
        if msg_flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise BadRecord("a job record cut short")
        records = netstring.decode_all(data, limit=MAX_RECORD, max_items=BATCH_MAX)
        if len(records) != len(fds):
            raise BadRecord(f"{len(records)} jobs with {len(fds)} descriptors")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return list(zip(records, fds, strict=True))


def _run_batch(sock: socket.socket, home: Home, host: str, jobs: list[Job]) -> bool:
    """Run one batch, reporting each job in order; False after a bug (exit now).

    Maildir-only deliveries are written as they come and committed together
    (local/maildircommit.py) just before they are reported. Any other
    delivery (programs, mboxes, forwards) first has the ones before it
    committed and reported, lspawn told it may be slow (SLOW), and then runs
    alone, as qmail-local would.
    """
    batch = _Batch(sock)
    try:
        done = 0
        while done < len(jobs):
            for data, fd in jobs[done:]:
                done += 1
                item = _start_job(home, host, data, fd)
                if isinstance(item, Started) and item.copies is None:
                    batch.report()
                    sock.sendall(SLOW)
                    rc, text = complete(item)
                    batch.send(encode_result(rc, _text(text)))
                else:
                    batch.waiting.append(item)
            if batch.waiting and done < BATCH_MAX:
                # jobs that came while these were written join their group (the
                # caller closes their descriptors with the others')
                jobs.extend(_receive(sock, wait=False))
        batch.report()
    except Exception:
        # a bug in delivery: defer every job not yet reported, and start the
        # next ones from a fresh fork rather than from whatever state this
        # one left behind. Copies not committed were never reported done.
        for item in batch.waiting:
            if isinstance(item, Started) and item.copies:
                for c in item.copies:
                    with contextlib.suppress(OSError):
                        maildircommit.discard(c)
        report = traceback.format_exc()[-REPORT_LIMIT:].encode()
        for _ in range(len(jobs) - batch.reported):
            sock.sendall(encode_result(EXIT_TEMP, report))
        return False
    return True


class _Batch:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.waiting: list[Started | tuple[int, bytes]] = []
        self.reported = 0

    def send(self, record: bytes, results: int = 1) -> None:
        self.sock.sendall(record)
        self.reported += results

    def report(self) -> None:
        """Commit the waiting deliveries' copies together, then report them in one record."""
        waiting = self.waiting
        if not waiting:
            return
        maildircommit.commit(
            [
                c
                for item in waiting
                if isinstance(item, Started) and item.copies
                for c in item.copies
            ]
        )
        record = []
        for item in waiting:
            if isinstance(item, Started):
                rc, text = complete(item)
                record.append(encode_result(rc, _text(text), grouped=True))
            else:  # ended early (a failure): it ran nothing slow either
                record.append(encode_result(item[0], item[1], grouped=True))
        for i in range(0, len(record), BATCH_MAX):  # more only if lspawn broke its cap
            part = record[i : i + BATCH_MAX]
            self.send(b"".join(part), len(part))
        waiting.clear()


def _text(text: str) -> bytes:
    return text.encode("utf-8", "replace")


def _start_job(home: Home, host: str, data: bytes, fd: int) -> Started | tuple[int, bytes]:
    """Read a job's .qmail and write its Maildir copies; (code, report) if it ended already.

    The fd is opened by lspawn before this worker's privileges were dropped:
    the recipient may not be able to open queue/mess itself.
    """
    try:
        req = decode_request(data)
    except ValueError as exc:
        return EXIT_TEMP, f"bad job from lspawn: {exc}".encode()
    path = home.q("mess", req.messpath)
    job = LocalJob(path, req.sender, req.rcpt, req.key, req.retry, message_fd=fd)
    item = start(Delivery(home, job, req.user, req.aliasempty, host))
    if isinstance(item, Started):
        return item
    return item[0], _text(item[1])


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
