"""qmail-clean: remove queue files on send's behalf.

Runs as: qmailq (the invoking user in embedded mode).
Reads:   commands ``todo/N`` and ``foop/N`` on its Unix socket; the names in
         queue/mess, intd, todo, info and pid for its sweeps.
Writes:  unlinks queue/intd/N, queue/todo/N, queue/mess/S/N and old
         queue/pid files; nothing else.
Trusts:  nothing: a command must be ``todo/`` or ``foop/`` + digits, 7..100
         bytes, or it is answered ``x``.

Every request read is carried out, even when send is gone and cannot hear
the answer: the requests are idempotent, and a request dropped would leave
its files for send's successor to ask again at best, forever at worst.

The sweeps (qmail-files §6.6): pid/ files, and abandoned messages: a
mess/S/N with no intd/N, todo/N or info/S/N whose file is older than
MAX_AGE_S: debris of a writer that died between creating mess and
committing todo (its own start-up removes that too, but only if it starts
again), or of any crash that left a body without its names.
36 hours exceeds the writer's 24-hour client limit, so no message still
being received is touched. The checks follow the order in which a
message's names appear (intd, then todo, then info, which send creates
before asking to remove todo) so that a message moving along is always
seen in one place or the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import time

from pyqmail.config import SPLIT, Home
from pyqmail.formats import netstring
from pyqmail.ipc.frames import FrameBuffer, pack
from pyqmail.ipc.listen import peer_allowed, send_uids, unix_listener, wait_for_stop
from pyqmail.unix import durable
from pyqmail.unix.logfmt import log

MAX_AGE_S = 36 * 3600  # qmail's age for abandoned pid/ files and messages
SWEEP_EVERY = 30  # requests between pid/ sweeps
MESS_SWEEP_INTERVAL_S = 76431  # qmail-send's "about once a day"
MAX_REQUEST = 200


def _exists(path: str) -> bool:
    """Only a name known absent is absent: any other error counts as present."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


class Cleaner:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.count = 0

    def handle(self, cmd: bytes) -> bytes:
        if not 7 <= len(cmd) <= 100:
            return b"x"
        kind, _, digits = cmd.partition(b"/")
        if kind not in (b"todo", b"foop") or not digits.isdigit():
            return b"x"
        if self.count % SWEEP_EVERY == 0:
            self.sweep_pid()
        self.count += 1
        msg_id = int(digits)
        try:
            durable.unlink_quiet(self.home.q("intd", str(msg_id)))
            if kind == b"todo":
                durable.unlink_quiet(self.home.q("todo", str(msg_id)))
                durable.fsync_dir(self.home.q("todo"))
            else:
                durable.unlink_quiet(self.home.split_path("mess", msg_id))
        except OSError as exc:
            log(f"warning: unable to clean {cmd.decode(errors='replace')}: {exc}")
            return b"!"
        return b"+"

    def sweep_pid(self) -> None:
        cutoff = time.time() - MAX_AGE_S
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.home.q("pid")):
                with contextlib.suppress(OSError):
                    if entry.stat().st_atime < cutoff:
                        os.unlink(entry.path)

    def sweep_mess(self, now: float | None = None) -> int:
        """Remove abandoned messages; returns how many."""
        cutoff = (time.time() if now is None else now) - MAX_AGE_S
        removed = 0
        for sub in range(SPLIT):
            try:
                names = os.listdir(self.home.q("mess", str(sub)))
                info = set(os.listdir(self.home.q("info", str(sub))))
            except OSError as exc:
                log(f"warning: mess sweep skipped split {sub}: {exc}")
                continue
            for name in names:
                if name in info or not name.isdigit():
                    continue
                if self._abandoned(sub, name, cutoff):
                    removed += 1
        level = "warning" if removed else "info"
        log(f"{level}: mess sweep removed {removed} abandoned message(s)")
        return removed

    def _abandoned(self, sub: int, name: str, cutoff: float) -> bool:
        mess = self.home.q("mess", str(sub), name)
        try:
            st = os.stat(mess)
        except OSError:
            return False
        # a message still streaming in has a fresh mtime; qmail looks at atime
        if max(st.st_atime, st.st_mtime) >= cutoff:
            return False
        for path in (
            self.home.q("intd", name),
            self.home.q("todo", name),
            self.home.q("info", str(sub), name),
        ):
            if _exists(path):
                return False
        try:
            os.unlink(mess)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                log(f"warning: unable to remove abandoned {mess}: {exc}")
            return False
        log(f"info: removed abandoned message {name}: no intd, todo or info")
        return True

    async def sweep_mess_forever(self) -> None:
        while True:
            await asyncio.to_thread(self.sweep_mess)
            await asyncio.sleep(MESS_SWEEP_INTERVAL_S)

    async def client(self, conn: socket.socket) -> None:
        """Serve one send: every request read is carried out, replies while it listens."""
        loop = asyncio.get_running_loop()
        frames = FrameBuffer(MAX_REQUEST)
        replying = True
        try:
            while True:
                data = await loop.sock_recv(conn, 65536)
                if not data:
                    break
                for cmd in frames.feed(data):
                    reply = self.handle(cmd)
                    if not replying:
                        continue
                    try:
                        await loop.sock_sendall(conn, pack(cmd, reply))
                    except OSError as exc:
                        replying = False  # send is gone: finish what it asked anyway
                        log(f"warning: send stopped listening ({exc}); finishing its requests")
        except (OSError, netstring.NetstringError) as exc:
            log(f"warning: dropped a client: {exc}")
        finally:
            conn.close()


async def serve(home: Home) -> None:
    cleaner = Cleaner(home)
    path = home.socket("clean")
    allowed = send_uids(path)
    listener = unix_listener(path)
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def accept_forever() -> None:
        while True:
            conn, _ = await loop.sock_accept(listener)
            if not peer_allowed(conn, allowed):
                conn.close()
                continue
            conn.setblocking(False)
            task = loop.create_task(cleaner.client(conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    for coro in (accept_forever(), cleaner.sweep_mess_forever()):
        task = loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await wait_for_stop()
    for task in list(tasks):
        task.cancel()
    listener.close()
