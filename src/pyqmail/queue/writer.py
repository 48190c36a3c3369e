"""qmail-queue as a daemon: the only program that adds messages to queue/.

Runs as: qmailq (the invoking user in embedded mode).
Reads:   its Unix socket (queue/lock/queue.sock); nothing from the network.
Writes:  queue/mess/S/N, queue/intd/N, queue/todo/N; pulls lock/trigger.
Trusts:  no client. Frames are length-bounded, the envelope is parsed
         strictly, the origin a client claims is believed only from a peer
         uid allowed to claim it (SO_PEERCRED).

Theory of operation (qmail-files §6.3, with group commit):
  1. mess/S/N is created O_EXCL and gets the Received line and the message
     as it streams in.
  2. The envelope goes to intd/N.
  3. The commit thread takes every message that reached this point, fsyncs
     their mess and intd files and the directories (one round), renames
     each intd/N to todo/N and fsyncs todo/. Only then is any client
     answered K. Two such batches may be in flight at once.
     The rename is the commit point: a crash before it leaves S2/S3 debris
     that start-up removes; after it, the message is queued.
  4. One byte down lock/trigger wakes send.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from pyqmail.config import SPLIT, Home
from pyqmail.formats import envelope as env_fmt
from pyqmail.formats.dates import date822
from pyqmail.ipc import queue_proto
from pyqmail.ipc.listen import wait_for_stop
from pyqmail.ipc.queue_proto import CHUNK_LIMIT, QueueFailure
from pyqmail.unix import accounts, durable
from pyqmail.unix.logfmt import log

COMMITS_IN_FLIGHT = 2
_CREATOR = ThreadPoolExecutor(max_workers=4, thread_name_prefix="create")


@dataclass(slots=True)
class Pending:
    msg_id: int
    mess_fd: int
    intd_fd: int
    done: asyncio.Future[None] = field(repr=False)


async def create_off_loop(path: str) -> int:
    """create_exclusive in a thread: creating a file waits for the journal
    while a commit runs, and the loop must keep serving other clients.

    If the caller is cancelled meanwhile, the file it will never hear of is
    closed and removed as soon as it exists.
    """
    fut = _CREATOR.submit(durable.create_exclusive, path, 0o640)
    try:
        return await asyncio.wrap_future(fut)
    except asyncio.CancelledError:
        fut.add_done_callback(lambda f: _undo_create(f, path))
        raise


def _undo_create(fut: Future[int], path: str) -> None:
    if fut.cancelled() or fut.exception() is not None:
        return
    with contextlib.suppress(OSError):
        os.close(fut.result())
    durable.unlink_quiet(path)


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
        self._commits: set[asyncio.Task[None]] = set()  # batches being committed
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

    async def _alloc(self) -> tuple[int, int]:
        while True:
            msg_id = max(self._next_id, int(time.time() * 1000))
            self._next_id = msg_id + 1
            try:
                fd = await create_off_loop(self.home.split_path("mess", msg_id))
            except FileExistsError:
                continue
            return msg_id, fd

    # -- one client -----------------------------------------------------
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

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        uid, pid = -1, 0
        if sock is not None:
            from pyqmail.ipc.frames import peer_uid_pid

            uid, pid = peer_uid_pid(sock)
        await queue_proto.answer(writer, self._receive(reader, uid, pid))

    async def _receive(self, reader: asyncio.StreamReader, uid: int, pid: int) -> bytes:
        origin = await queue_proto.read_origin(reader)
        msg_id, mess_fd = await self._alloc()
        intd_fd = -1
        committed = False
        try:
            received = (
                f"Received: (qmail {pid} {self._origin_text(origin, uid)}); "
                f"{date822(time.time())}\n"
            )
            durable.write_all(mess_fd, received.encode())
            await queue_proto.read_body(reader, lambda chunk: durable.write_all(mess_fd, chunk))
            env = await queue_proto.read_envelope(reader)
            intd_fd = await create_off_loop(self.home.q("intd", str(msg_id)))
            todo = env_fmt.QueuedEnvelope(max(uid, 0), pid, env.sender, env.recipients)
            durable.write_all(intd_fd, env_fmt.format_todo(todo))
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._pending.append(Pending(msg_id, mess_fd, intd_fd, done))
            committed = True  # from here the commit thread owns the fds
            self._start_commits()
            await done
            return b"K%d" % msg_id
        except OSError as exc:
            raise QueueFailure("Z", "qq write error or disk full (#4.3.0)") from exc
        finally:
            if not committed:
                self._discard(msg_id, mess_fd, intd_fd)

    def _discard(self, msg_id: int, mess_fd: int, intd_fd: int) -> None:
        for fd in (mess_fd, intd_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        durable.unlink_quiet(self.home.q("intd", str(msg_id)))
        durable.unlink_quiet(self.home.split_path("mess", msg_id))

    # -- group commit ---------------------------------------------------
    def _start_commits(self) -> None:
        # Two batches in flight: while one waits for its second journal
        # commit (todo/), the next one's data is already being synced. Each
        # message still gets both, in order, before its client hears K.
        loop = asyncio.get_running_loop()
        while self._pending and len(self._commits) < COMMITS_IN_FLIGHT:
            batch, self._pending = self._pending, []
            self._idle.clear()
            # held in the set, or the loop may collect the task mid-commit
            task = loop.create_task(self._commit_batch(batch))
            self._commits.add(task)
            task.add_done_callback(self._commit_done)

    def _commit_done(self, task: asyncio.Task[None]) -> None:
        self._commits.discard(task)
        self._start_commits()
        if not self._commits:
            self._idle.set()

    async def _commit_batch(self, batch: list[Pending]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self._commit, batch)
        except OSError as exc:
            log(f"warning: commit failed: {exc}")
            for p in batch:
                self._discard(p.msg_id, -1, -1)
                if not p.done.done():
                    p.done.set_exception(exc)
            return
        for p in batch:
            if not p.done.done():
                p.done.set_result(None)
        self._pull_trigger()

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
    server = await asyncio.start_unix_server(qw.handle, sock=sock, limit=CHUNK_LIMIT + 64)
    log("status: queue writer ready")
    await wait_for_stop()
    server.close()
    # finish the batch in flight so every client that will hear K has its fsync
    await asyncio.wait_for(qw.drain(), 4)
    log("status: exiting")
