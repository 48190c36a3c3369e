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
     (a name that did not exist) as it streams.
  2. When the envelope arrives, mess/S/N is created and written (if it was
     not already), and the envelope goes to intd/N. Each file is a spare
     (queue/spare.py: a finished message's file, overwritten and cut to
     length) when there is one, else a new file. Both are plain writes
     on the event loop, which costs less than a thread hop per file.
  3. A commit round, run on the loop after the turn in which messages got
     here, takes every one of them, makes their mess and intd files and
     the directories durable (one sync), renames each intd/N to todo/N,
     and the next round's sync makes todo/ durable. Only then is the
     client answered K. Rounds are pipelined: one sync serves this round's
     files and the previous round's renames.
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
from pyqmail.queue import spare
from pyqmail.unix import accounts, durable
from pyqmail.unix.logfmt import log

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

    __slots__ = ("held", "mess_fd", "msg_id", "parts", "pid", "qw", "reused", "uid", "written")

    def __init__(self, qw: QueueWriter, received: bytes, uid: int, pid: int) -> None:
        self.qw = qw
        self.parts = [received]
        self.held = len(received)
        self.msg_id = 0
        self.mess_fd = -1
        self.reused = False  # mess_fd is a spare: cut it to `written` at the end
        self.written = 0
        self.uid = uid
        self.pid = pid

    def chunk(self, data: bytes) -> None:
        try:
            if self.mess_fd >= 0:
                durable.write_all(self.mess_fd, data)
                self.written += len(data)
                return
            self.parts.append(data)
            self.held += len(data)
            if self.held > IN_MEMORY:
                self._to_disk()
        except OSError as exc:
            raise QueueFailure("Z", WRITE_ERROR) from exc

    def _to_disk(self) -> None:
        self.msg_id, self.mess_fd, self.reused = self.qw.create_mess()
        data = b"".join(self.parts)
        self.parts = []
        durable.write_all(self.mess_fd, data)
        self.written = len(data)

    def finish(self, env: env_fmt.Envelope, reply: Callable[[bytes], None]) -> None:
        intd_fd = -1
        try:
            if self.mess_fd < 0:
                self._to_disk()
            if self.reused:
                os.ftruncate(self.mess_fd, self.written)
            todo = env_fmt.QueuedEnvelope(max(self.uid, 0), self.pid, env.sender, env.recipients)
            data = env_fmt.format_todo(todo)
            intd_fd, reused = self.qw.create_file(
                spare.ENVELOPE, self.qw.home.q("intd", str(self.msg_id))
            )
            durable.write_all(intd_fd, data)
            if reused:
                os.ftruncate(intd_fd, len(data))
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
        self.spares = spare.Spares(home)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch: list[Pending] = []  # files written, for the next round's sync
        self._renamed: list[Pending] = []  # in todo/, for the next round's sync
        self._round_due = False
        self._in_flight = 0  # messages handed to the commit, not yet answered
        self._trigger_fd = -1
        self.rounds = self.committed = 0  # for the exit line: messages per sync
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

    def create_mess(self) -> tuple[int, int, bool]:
        """A new mess/S/N that did not exist: (N, fd, True if it is a spare)."""
        while True:
            msg_id = max(self._next_id, int(time.time() * 1000))
            self._next_id = msg_id + 1
            try:
                fd, reused = self.create_file(spare.BODY, self.home.split_path("mess", msg_id))
            except FileExistsError:
                continue
            return msg_id, fd, reused

    def create_file(self, kind: str, path: str) -> tuple[int, bool]:
        """path, which must not exist, open for writing from offset 0: a spare
        if there is one (True), else a new file."""
        fd = self.spares.take(kind, path)
        if fd >= 0:
            return fd, True
        return durable.create_exclusive(path, 0o640), False

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

    def open_message(self, origin: bytes, uid: int, pid: int) -> Message:
        received = (
            f"Received: (qmail {pid} {self._origin_text(origin, uid)}); {date822(time.time())}\n"
        )
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
        self._in_flight += 1
        self._idle.clear()
        self._batch.append(pending)
        self._round_soon()

    def _round_soon(self) -> None:
        if not self._round_due:
            self._round_due = True
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._commit_round)

    def _commit_round(self) -> None:
        """One commit round, on the loop, pipelined: its one sync makes this
        round's files durable and the previous round's renames to todo/.

        Round n: sync(files of batch n, and todo/ holding batch n-1's names);
        now batch n-1 is queued (answer K) and batch n's data is safe to
        publish: rename its intd/N to todo/N. The next round, with or without
        new files, makes those renames durable: under load, one sync per
        round instead of two.

        The loop waits while the sync runs; messages arriving meanwhile are
        read after it and go in the next round. A thread of its own cost
        more than that wait: handing each batch over and each answer back,
        and sharing the GIL, took about 0.1 ms of CPU per message (measured
        on workload (a) at C=10: the writer's CPU went from 0.39 to 0.30 ms
        per message, and more messages per second at C=1, 10 and 50).
        """
        try:
            self._round()
        except BaseException as exc:
            # nothing can be acknowledged any more: die, and let the
            # supervisor start a writer that removes the debris
            log(f"alert: commit failed unexpectedly: {exc!r}")
            os._exit(111)

    def _round(self) -> None:
        self._round_due = False
        batch, self._batch = self._batch, []
        renamed, self._renamed = self._renamed, []
        if not batch and not renamed:
            return
        try:
            durable.fsync_fds_and_dirs(
                [fd for p in batch for fd in (p.mess_fd, p.intd_fd)],
                [os.path.dirname(self.home.split_path("mess", p.msg_id)) for p in batch]
                + ([self.home.q("intd")] if batch else [])
                + ([self.home.q("todo")] if renamed else []),
                fds_in_dirs=True,
            )
        except OSError as exc:
            # batch n is unpublished: it goes. Batch n-1 is in todo/ and
            # stays (send delivers it); its clients hear Z all the same,
            # as the sync that would have made it durable failed.
            log(f"warning: commit failed: {exc}")
            self._close_files(batch)
            for p in batch:
                self.discard(p.msg_id, -1, -1)
            self._answered([], renamed + batch)
            return
        self._close_files(batch)
        self.rounds += 1
        self.committed += len(renamed)
        if renamed:
            self._pull_trigger()
        # batch n-1 is queued; batch n is next
        failed: list[Pending] = []
        for p in batch:
            try:
                os.rename(self.home.q("intd", str(p.msg_id)), self.home.q("todo", str(p.msg_id)))
            except OSError as exc:
                log(f"warning: commit failed: {exc}")
                self.discard(p.msg_id, -1, -1)
                failed.append(p)
            else:
                self._renamed.append(p)
        if renamed or failed:
            self._answered(renamed, failed)
        if self._renamed:
            self._round_soon()

    @staticmethod
    def _close_files(batch: list[Pending]) -> None:
        for p in batch:
            for fd in (p.mess_fd, p.intd_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _answered(self, queued: list[Pending], failed: list[Pending]) -> None:
        """Answer a round's clients."""
        for p in failed:
            p.reply(b"Z" + WRITE_ERROR.encode())
        for p in queued:
            p.reply(b"K%d" % p.msg_id)
        self._in_flight -= len(queued) + len(failed)
        if not self._in_flight:
            self._idle.set()

    def _pull_trigger(self) -> None:
        # a descriptor of its own, kept open: send holds the FIFO
        # open for reading, so one write wakes it; with no reader (send
        # restarting) the write fails and the next pull opens it again
        if self._trigger_fd < 0:
            try:
                self._trigger_fd = os.open(self.home.trigger, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                return  # send not running: it scans todo/ when it starts
        try:
            os.write(self._trigger_fd, b"\0")
        except BlockingIOError:
            pass  # full of unread pulls: send will wake anyway
        except OSError:
            os.close(self._trigger_fd)
            self._trigger_fd = -1

    async def drain(self) -> None:
        await self._idle.wait()

    def close(self) -> None:
        """After drain()."""
        if self._trigger_fd >= 0:
            os.close(self._trigger_fd)
            self._trigger_fd = -1


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
    qw.close()
    log(
        f"status: exiting; {qw.committed} message(s) queued in {qw.rounds} commit round(s),"
        f" {qw.spares.reused} file(s) reused"
    )
