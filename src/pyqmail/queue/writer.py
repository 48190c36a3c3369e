"""qmail-queue as a daemon: the only program that adds messages to queue/.

Runs as: qmailq (the invoking user in embedded mode).
Reads:   its Unix socket (queue/lock/queue.sock); nothing from the network.
Writes:  queue/mess/S/N, queue/intd/N, queue/todo/N; pulls lock/trigger.
Trusts:  no client. Frames are length-bounded, the envelope is parsed
         strictly, the origin a client claims is believed only from a peer
         uid allowed to claim it (SO_PEERCRED).

Theory of operation (qmail-files §6.3, with group commit):
  1. The Received line and the message are held in memory as they stream
     in, up to IN_MEMORY bytes; a larger message goes on to mess/S/N
     (created O_EXCL) as it streams.
  2. When the envelope arrives, mess/S/N is created and written (if it was
     not already), and the envelope goes to intd/N. Both are plain writes
     on the event loop: creating a file may wait briefly for the journal
     while a commit runs, which costs less than a thread hop per file.
  3. The commit thread takes every message that reached this point, makes
     their mess and intd files and the directories durable (one syncfs),
     renames each intd/N to todo/N and syncs todo/. Only then is any
     client answered K. Two such batches may be in flight at once.
     The rename is the commit point: a crash before it leaves S2/S3 debris
     (mess without todo, intd without todo) that start-up removes; after
     it, the message is queued. A message refused or broken off before
     step 2 never touched the disk, or is removed at once.
  4. One byte down lock/trigger wakes send.
A client connection carries message after message (ipc/queue_proto); each
message's answer depends on that message alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from pyqmail.config import SPLIT, Home
from pyqmail.formats import envelope as env_fmt
from pyqmail.formats.dates import date822
from pyqmail.ipc.listen import wait_for_stop
from pyqmail.ipc.queue_proto import QueueFailure, SubmissionServer
from pyqmail.unix import accounts, durable
from pyqmail.unix.logfmt import log

COMMITS_IN_FLIGHT = 2
IN_MEMORY = 256 << 10  # a message up to this size reaches the disk in one write
WRITE_ERROR = "qq write error or disk full (#4.3.0)"


@dataclass(slots=True)
class Pending:
    msg_id: int
    mess_fd: int
    intd_fd: int
    reply: Callable[[bytes], None]


class Message:
    """One message on its way in (a queue_proto Receiver)."""

    __slots__ = ("held", "mess_fd", "msg_id", "parts", "pid", "qw", "uid")

    def __init__(self, qw: QueueWriter, received: bytes, uid: int, pid: int) -> None:
        self.qw = qw
        self.parts = [received]
        self.held = len(received)
        self.msg_id = 0
        self.mess_fd = -1
        self.uid = uid
        self.pid = pid

    def chunk(self, data: bytes) -> None:
        try:
            if self.mess_fd >= 0:
                durable.write_all(self.mess_fd, data)
                return
            self.parts.append(data)
            self.held += len(data)
            if self.held > IN_MEMORY:
                self._to_disk()
        except OSError as exc:
            raise QueueFailure("Z", WRITE_ERROR) from exc

    def _to_disk(self) -> None:
        self.msg_id, self.mess_fd = self.qw.create_mess()
        data = b"".join(self.parts)
        self.parts = []
        durable.write_all(self.mess_fd, data)

    def finish(self, env: env_fmt.Envelope, reply: Callable[[bytes], None]) -> None:
        intd_fd = -1
        try:
            if self.mess_fd < 0:
                self._to_disk()
            intd_fd = durable.create_exclusive(self.qw.home.q("intd", str(self.msg_id)), 0o640)
            todo = env_fmt.QueuedEnvelope(max(self.uid, 0), self.pid, env.sender, env.recipients)
            durable.write_all(intd_fd, env_fmt.format_todo(todo))
        except OSError as exc:
            if intd_fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(intd_fd)
            raise QueueFailure("Z", WRITE_ERROR) from exc
        # from here the commit owns the files
        self.qw.commit_later(Pending(self.msg_id, self.mess_fd, intd_fd, reply))
        self.mess_fd = -1

    def abort(self) -> None:
        if self.msg_id:
            self.qw.discard(self.msg_id, self.mess_fd, -1)
            self.msg_id, self.mess_fd = 0, -1


class QueueWriter:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.my_uid = os.geteuid()
        # who may say a message came from the network or is a bounce; anyone
        # else is recorded by uid, as qmail-queue does for local injection
        self.network_uids = self._uids_of("qmaild")
        self.bounce_uids = self._uids_of("qmails")
        self._next_id = 0
        self._pending: list[Pending] = []
        self._commits: set[asyncio.Future[None]] = set()  # batches being committed
        self._date_at, self._date_text = 0, ""
        self.server = SubmissionServer(self.open_message)  # the socket's protocol factory
        self._idle = asyncio.Event()
        self._idle.set()

    # -- start-up -------------------------------------------------------
    def recover(self) -> None:
        """Remove debris of a crashed writer (S2/S3) and pick the next id."""
        todo = {int(n) for n in os.listdir(self.home.q("todo")) if n.isdigit()}
        highest = max(todo, default=0)
        for name in os.listdir(self.home.q("intd")):
            if name.isdigit() and int(name) not in todo:
                durable.unlink_quiet(self.home.q("intd", name))
        removed = 0
        for sub in range(SPLIT):
            info = set(os.listdir(self.home.q("info", str(sub))))
            for name in os.listdir(self.home.q("mess", str(sub))):
                if not name.isdigit():
                    continue
                n = int(name)
                highest = max(highest, n)
                if n not in todo and name not in info:
                    durable.unlink_quiet(self.home.q("mess", str(sub), name))
                    removed += 1
        if removed:
            log(f"warning: removed {removed} half-written message(s) left by a crash")
        self._next_id = max(highest + 1, int(time.time() * 1000))

    def create_mess(self) -> tuple[int, int]:
        """A new mess/S/N, created O_EXCL: (N, fd)."""
        while True:
            msg_id = max(self._next_id, int(time.time() * 1000))
            self._next_id = msg_id + 1
            try:
                fd = durable.create_exclusive(self.home.split_path("mess", msg_id), 0o640)
            except FileExistsError:
                continue
            return msg_id, fd

    # -- one message ----------------------------------------------------
    def _uids_of(self, user: str) -> frozenset[int]:
        uids = {0, self.my_uid}
        ids = accounts.lookup(user)
        if ids is not None and accounts.is_system_home(self.home.queue):
            uids.add(ids.uid)
        return frozenset(uids)

    def _origin_text(self, origin: bytes, uid: int) -> str:
        if origin == b"network" and uid in self.network_uids:
            return "invoked from network"
        if origin == b"bounce" and uid in self.bounce_uids:
            return "invoked for bounce"
        return f"invoked by uid {uid}"

    def _date(self) -> str:
        now = int(time.time())
        if now != self._date_at:
            self._date_at, self._date_text = now, date822(now)
        return self._date_text

    def open_message(self, origin: bytes, uid: int, pid: int) -> Message:
        received = f"Received: (qmail {pid} {self._origin_text(origin, uid)}); {self._date()}\n"
        return Message(self, received.encode(), uid, pid)

    def discard(self, msg_id: int, mess_fd: int, intd_fd: int) -> None:
        for fd in (mess_fd, intd_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        durable.unlink_quiet(self.home.q("intd", str(msg_id)))
        durable.unlink_quiet(self.home.split_path("mess", msg_id))

    # -- group commit ---------------------------------------------------
    def commit_later(self, pending: Pending) -> None:
        self._pending.append(pending)
        self._start_commits()

    def _start_commits(self) -> None:
        # Two batches in flight: while one waits for its second journal
        # commit (todo/), the next one's data is already being synced. Each
        # message still gets both, in order, before its client hears K.
        loop = asyncio.get_running_loop()
        while self._pending and len(self._commits) < COMMITS_IN_FLIGHT:
            batch, self._pending = self._pending, []
            self._idle.clear()
            fut = loop.run_in_executor(None, self._commit, batch)
            self._commits.add(fut)
            fut.add_done_callback(functools.partial(self._commit_done, batch=batch))

    def _commit_done(self, fut: asyncio.Future[None], *, batch: list[Pending]) -> None:
        self._commits.discard(fut)
        exc = fut.exception()
        if exc is not None:
            log(f"warning: commit failed: {exc}")
            for p in batch:
                self.discard(p.msg_id, -1, -1)
                p.reply(b"Z" + WRITE_ERROR.encode())
        else:
            for p in batch:
                p.reply(b"K%d" % p.msg_id)
            self._pull_trigger()
        self._start_commits()
        if not self._commits:
            self._idle.set()

    def _commit(self, batch: list[Pending]) -> None:
        # data and names of mess and intd must be durable before todo makes
        # them live; among themselves they need no order
        try:
            durable.fsync_fds_and_dirs(
                [fd for p in batch for fd in (p.mess_fd, p.intd_fd)],
                [os.path.dirname(self.home.split_path("mess", p.msg_id)) for p in batch]
                + [self.home.q("intd")],
            )
        finally:
            for p in batch:
                for fd in (p.mess_fd, p.intd_fd):
                    with contextlib.suppress(OSError):
                        os.close(fd)
        for p in batch:
            os.rename(self.home.q("intd", str(p.msg_id)), self.home.q("todo", str(p.msg_id)))
        durable.sync_dir(self.home.q("todo"))

    def _pull_trigger(self) -> None:
        try:
            fd = os.open(self.home.trigger, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            return  # send not running: it scans todo/ when it starts
        with contextlib.suppress(OSError):
            os.write(fd, b"\0")
        os.close(fd)

    async def drain(self) -> None:
        await self._idle.wait()


async def serve(home: Home, listen_fd: int | None) -> None:
    qw = QueueWriter(home)
    qw.recover()
    if listen_fd is not None:
        sock = socket.socket(fileno=listen_fd)
    else:
        durable.unlink_quiet(home.writer_socket)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(home.writer_socket)
        os.chmod(home.writer_socket, 0o660)
        sock.listen(256)
    server = await asyncio.get_running_loop().create_unix_server(qw.server, sock=sock)
    log("status: queue writer ready")
    await wait_for_stop()
    server.close()
    qw.server.close()
    # finish the batch in flight so every client that will hear K has its fsync
    await asyncio.wait_for(qw.drain(), 4)
    log("status: exiting")
