"""qmail-lspawn: run each local delivery as the recipient, in reusable workers.

Runs as: root when started as root (only to become each recipient); the
         invoking user in embedded mode.
Reads:   delivery requests from send on its Unix socket; users/cdb (or users/assign);
         control/defaultdelivery, control/concurrencylocal, control/syncmode.
Writes:  nothing itself; its workers deliver as the recipient.
Trusts:  send's requests are parsed strictly (6 fields, bounded sizes);
         the message path must name a file under queue/mess. Its workers
         only for the reports of the jobs it gave them: a worker whose
         report is mangled, or answers more jobs than it has, is killed.

Single-threaded, no event loop. Deliveries run in workers forked from this
clean, preloaded process (see workers.py): one identity per worker (the
recipient's uid when root, ours in embedded mode), at most
concurrencylocal of them, idle ones retired after a while. While a worker
is busy with Maildir-only deliveries, more for its identity are queued on
it (up to BATCH_MAX), so that it commits them as one group; a worker that
said SLOW (it runs a program) gets jobs only when idle again, until one of
its deliveries is a grouped one again. The jobs a worker gets in one loop
turn go in one record, and the replies to send of one turn in one write.
Two requests for the same (message, recipient) key never run at once: the
second waits for the first's result, so a retry after send restarts cannot
race the attempt still running.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import re
import selectors
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field

from pyqmail.config import Home, SendConfig, apply_syncmode, read_control
from pyqmail.formats import control, netstring
from pyqmail.formats.address import split_at_last_at
from pyqmail.ipc.frames import FrameBuffer, pack
from pyqmail.ipc.listen import peer_allowed, send_uids, unix_listener
from pyqmail.local.users import AssignCache, resolve
from pyqmail.lspawn.workers import (
    BATCH_MAX,
    MAX_RECORD,
    REPORT_LIMIT,
    SLOW,
    Request,
    decode_results,
    encode_jobs,
    encode_request,
    fork_worker,
)
from pyqmail.unix.logfmt import log

MESSPATH_RE = re.compile(rb"\A[0-9]{1,3}/[0-9]{1,20}\Z")
KEY_RE = re.compile(rb"\A[0-9]{1,20}\.Q[0-9]{1,20}R[0-9a-f]{8}\Z")
MAX_ADDRESS = 1000
MAX_JOB = MAX_RECORD - 16  # a job alone in a record, in its netstring
IDLE_RETIRE_S = 60.0

Identity = tuple[int, int]


@dataclass(slots=True)
class Task:
    """One delivery and everyone waiting for its result."""

    key: bytes
    request: Request
    record: bytes  # the request as sent to a worker
    identity: Identity
    waiters: list[tuple[socket.socket, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class Worker:
    pid: int
    sock: socket.socket
    identity: Identity
    tasks: deque[Task] = field(default_factory=deque)  # sent to it, answered in order
    # its deliveries are Maildir-only ones, done in groups: more may queue on
    # it. False once it said it runs something slow (a program...)
    grouping: bool = True
    idle_since: float = 0.0
    # jobs given to it in this loop turn, sent together at its end:
    # (request record, message descriptor)
    outbox: list[tuple[bytes, int]] = field(default_factory=list)


def _record_part(out: list[tuple[bytes, int]], start: int) -> list[tuple[bytes, int]]:
    """The jobs from out[start] on that fit in one record to a worker (at least one)."""
    size = 0
    end = start
    while end < len(out) and (
        end == start or (size + len(out[end][0]) + 16 <= MAX_RECORD and end - start < BATCH_MAX)
    ):
        size += len(out[end][0]) + 16  # the netstring around it
        end += 1
    return out[start:end]


def exit_to_report(code: int | None, output: bytes) -> bytes:
    """qmail-lspawn's mapping of qmail-local's exit status to K/Z/D."""
    text = output[:REPORT_LIMIT].replace(b"\0", b"?")
    if len(output) > REPORT_LIMIT:
        text += b"\nError report too long, sorry."
    if code is None:
        return b"Zqmail-local crashed.\n"
    if code == 0:
        return b"K" + text
    if code in (111, 71, 74, 75):
        return b"Z" + text
    return b"D" + text


class Spawner:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.sel = selectors.DefaultSelector()
        self.listener = unix_listener(home.socket("lspawn"))
        self.allowed = send_uids(home.socket("lspawn"))
        self.conns: dict[socket.socket, FrameBuffer] = {}
        self.workers: dict[int, Worker] = {}  # by socket fd
        self.running: dict[bytes, Task] = {}
        self.pending: deque[Task] = deque()
        self.outbox: dict[socket.socket, list[bytes]] = {}  # replies of this loop turn
        self.assign = AssignCache(home)
        self.stopping = False
        self.max_workers = max(1, SendConfig.load(home).concurrencylocal)
        self.root = os.geteuid() == 0
        self._aliasempty: tuple[tuple[int, int, int] | None, str] | None = None

    def aliasempty(self) -> str:
        """control/defaultdelivery, read again only when the file changes."""
        path = self.home.control("defaultdelivery")
        try:
            st = os.stat(path)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if self._aliasempty is None or self._aliasempty[0] != stamp:
            text = read_control(self.home, "defaultdelivery")
            self._aliasempty = (stamp, control.parse_line(text, None) or "./Maildir/")
        return self._aliasempty[1]

    def busy(self) -> bool:
        return bool(self.running)

    def serve(self) -> None:
        self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        while not (self.stopping and not self.busy()):
            # workers first: a SLOW notice or a result is seen before the
            # requests that arrived in the same turn are given a worker
            events = sorted(self.sel.select(timeout=1.0), key=lambda e: e[0].data != "worker")
            for key, _ in events:
                if key.data == "listen":
                    conn, _ = self.listener.accept()
                    if not peer_allowed(conn, self.allowed):  # only send may ask
                        conn.close()
                        continue
                    conn.setblocking(True)
                    self.conns[conn] = FrameBuffer()
                    self.sel.register(conn, selectors.EVENT_READ, "conn")
                elif key.data == "conn":
                    self._read_conn(key.fileobj)  # type: ignore[arg-type]
                else:
                    self._read_worker(key.fd)
            for _ in range(3):  # again only for jobs whose worker just went away
                if self.pending:
                    self._start_pending()
                self._send_jobs()
            self._send_replies()
            self._retire_idle(time.monotonic() - IDLE_RETIRE_S)
        self._retire_idle(float("inf"))

    def _drop_conn(self, conn: socket.socket) -> None:
        self.sel.unregister(conn)
        self.conns.pop(conn, None)
        conn.close()

    def _read_conn(self, conn: socket.socket) -> None:
        if conn not in self.conns:
            return  # dropped earlier in this loop turn
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop_conn(conn)
            return
        try:
            frames = self.conns[conn].feed(data)
        except netstring.NetstringError as exc:
            log(f"warning: bad request from send: {exc}")
            self._drop_conn(conn)
            return
        for frame in frames:
            self._request(conn, frame)

    def _reply(self, conn: socket.socket, job_id: bytes, report: bytes) -> None:
        """Held until the end of this loop turn: a group's reports go out in one write."""
        if conn in self.conns:  # else that send is gone; its successor will ask again
            self.outbox.setdefault(conn, []).append(pack(job_id, report))

    def _send_replies(self) -> None:
        outbox, self.outbox = self.outbox, {}
        for conn, frames in outbox.items():
            if conn not in self.conns:
                continue
            try:
                conn.sendall(b"".join(frames))
            except OSError:
                self._drop_conn(conn)

    def _request(self, conn: socket.socket, frame: bytes) -> None:
        fields = frame.split(b"\0")
        if len(fields) != 6:
            log("warning: malformed request from send")
            return
        job_id, messpath, sender, rcpt, key, retry = fields
        if not MESSPATH_RE.match(messpath) or not KEY_RE.match(key):
            self._reply(conn, job_id, b"Zqmail-spawn unable to open message. (#4.3.0)")
            return
        if len(sender) > MAX_ADDRESS or len(rcpt) > MAX_ADDRESS:
            self._reply(conn, job_id, b"DSorry, address too long. (#5.1.3)")
            return
        running = self.running.get(key + b"\0" + rcpt)
        if running is not None:
            running.waiters.append((conn, job_id))
            return
        task = self._task(conn, job_id, messpath, sender, rcpt, key, retry == b"1")
        if task is not None:
            self.running[task.key] = task
            self._start(task)

    def _task(
        self,
        conn: socket.socket,
        job_id: bytes,
        messpath: bytes,
        sender: bytes,
        rcpt: bytes,
        key: bytes,
        retry: bool,
    ) -> Task | None:
        local_b, domain = split_at_last_at(rcpt)
        if domain is None:
            self._reply(conn, job_id, b"DSorry, address must include host name. (#5.1.3)")
            return None
        if not local_b:
            self._reply(conn, job_id, b"Kdid 0+0+0\n")  # @domain is the trash address
            return None
        local = local_b.decode("utf-8", "surrogateescape")
        try:
            user = resolve(local, self.home, self.assign.get())
        except (OSError, ValueError) as exc:
            self._reply(conn, job_id, f"ZUnable to look up the user: {exc}. (#4.3.0)".encode())
            return None
        if user is None:
            self._reply(conn, job_id, b"ZUnable to find alias user! (#4.3.0)")
            return None
        request = Request(
            messpath.decode(), sender, rcpt, key.decode(), retry, user, self.aliasempty()
        )
        try:
            record = encode_request(request)
        except ValueError as exc:  # from the users db: its entry is broken
            self._reply(conn, job_id, f"ZUnable to look up the user: {exc}. (#4.3.0)".encode())
            return None
        if len(record) > MAX_JOB:
            self._reply(conn, job_id, b"DSorry, delivery request too long. (#5.1.3)")
            return None
        # as root a worker becomes the recipient; otherwise every worker is us
        identity = (user.uid, user.gid) if self.root else (os.geteuid(), os.getegid())
        return Task(key + b"\0" + rcpt, request, record, identity, [(conn, job_id)])

    # -- workers ---------------------------------------------------------------
    def _start(self, task: Task) -> None:
        worker = self._worker_for(task.identity)
        if worker is None:
            self.pending.append(task)
            return
        try:
            # opened here, before the worker's uid could be refused access
            fd = os.open(self.home.q("mess", task.request.messpath), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self._finish(
                task, f"Zqmail-spawn unable to open message: {exc.strerror}. (#4.3.0)".encode()
            )
            return
        worker.outbox.append((task.record, fd))
        worker.tasks.append(task)

    def _send_jobs(self) -> None:
        """Send each worker the jobs it got in this loop turn, as few records as fit."""
        for worker in [w for w in self.workers.values() if w.outbox]:
            out, worker.outbox = worker.outbox, []
            sent = 0
            try:
                while sent < len(out):
                    part = _record_part(out, sent)
                    socket.send_fds(
                        worker.sock, [encode_jobs([r for r, _ in part])], [fd for _, fd in part]
                    )
                    sent += len(part)
            except OSError:
                # gone: what it never got is started again, the rest crashed
                unsent = [worker.tasks.pop() for _ in range(len(out) - sent)]
                self._worker_gone(worker)
                self.pending.extendleft(unsent)
            finally:
                for _, fd in out:
                    os.close(fd)

    def _worker_for(self, identity: Identity) -> Worker | None:
        """The worker to take a delivery for identity, or None: wait for one.

        A busy worker whose deliveries are grouped comes first (the one with
        most queued): the deliveries queued on it share one group commit.
        Then an idle one, then a new one.
        """
        best: Worker | None = None
        idle: Worker | None = None
        for w in self.workers.values():
            if w.identity != identity:
                continue
            n = len(w.tasks)
            if not n:
                idle = idle or w
            elif w.grouping and n < BATCH_MAX and (best is None or n > len(best.tasks)):
                best = w
        if best is not None or idle is not None:
            return best or idle
        if len(self.workers) >= self.max_workers:
            others = [w for w in self.workers.values() if not w.tasks]
            if not others:
                return None
            self._retire(min(others, key=lambda w: w.idle_since))
        close = [self.listener, *self.conns, *(w.sock for w in self.workers.values())]
        pid, sock = fork_worker(self.home, identity[0], identity[1], close)
        worker = Worker(pid, sock, identity)
        self.workers[sock.fileno()] = worker
        self.sel.register(sock, selectors.EVENT_READ, "worker")
        return worker

    def _start_pending(self) -> None:
        for _ in range(len(self.pending)):
            task = self.pending.popleft()
            before = len(self.pending)
            self._start(task)
            if len(self.pending) > before:
                return  # no worker free: keep the order, wait for one

    def _retire(self, worker: Worker) -> None:
        """Close our end: an idle worker exits at that EOF."""
        del self.workers[worker.sock.fileno()]
        self.sel.unregister(worker.sock)
        worker.sock.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(worker.pid, 0)

    def _retire_idle(self, before: float) -> None:
        for w in list(self.workers.values()):
            if not w.tasks and w.idle_since < before:
                self._retire(w)

    def _worker_gone(self, worker: Worker, *, kill: bool = False) -> None:
        """Forget a worker that closed its end (or is killed now, when it
        misbehaved); every job it had not answered crashed."""
        del self.workers[worker.sock.fileno()]
        self.sel.unregister(worker.sock)
        worker.sock.close()
        if kill:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
        try:
            _, status = os.waitpid(worker.pid, 0)
            code: int | None = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            code = None
        for _, fd in worker.outbox:
            os.close(fd)
        worker.outbox.clear()
        if worker.tasks:
            log(f"warning: lspawn worker {worker.pid} died with status {code}")
        while worker.tasks:
            self._finish(worker.tasks.popleft(), exit_to_report(None, b""))

    def _read_worker(self, fd: int) -> None:
        worker = self.workers.get(fd)
        if worker is None:
            return  # retired earlier in this loop turn
        flags = 0
        while True:  # every record waiting: a batch's results come together
            try:
                data = worker.sock.recv(MAX_RECORD, flags)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self._worker_gone(worker)
                break
            flags = socket.MSG_DONTWAIT
            if data == SLOW:
                worker.grouping = False
                continue
            results = decode_results(data)
            if results is None or len(results) > len(worker.tasks):
                log(f"warning: lspawn worker {worker.pid} sent a mangled report; killing it")
                self._worker_gone(worker, kill=True)
                break
            for code, text, worker.grouping in results:
                self._finish(worker.tasks.popleft(), exit_to_report(code, text))
            worker.idle_since = time.monotonic()
        self._start_pending()

    def _finish(self, task: Task, report: bytes) -> None:
        self.running.pop(task.key, None)
        for conn, job_id in task.waiters:
            self._reply(conn, job_id, report)


def serve(home: Home) -> None:
    apply_syncmode(home)
    # what durable loads at its first syncfs, loaded here as root: a worker
    # that dropped privileges may not be able to read the module files
    importlib.import_module("ctypes")
    spawner = Spawner(home)
    # the preloaded heap, kept out of the collector, stays shared with the
    # workers instead of being copied page by page as gc touches it
    gc.freeze()

    def on_term(_sig: int, _frame: object) -> None:
        spawner.stopping = True
        with contextlib.suppress(KeyError, ValueError):
            spawner.sel.unregister(spawner.listener)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    spawner.serve()
