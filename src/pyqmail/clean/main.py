"""qmail-clean: remove queue files on send's behalf.

Runs as: qmailq (the invoking user in embedded mode).
Reads:   commands ``todo/N``, ``foop/N`` and ``done/N`` on its Unix socket; the names in
         queue/mess, intd, todo, info and pid for its sweeps.
Writes:  moves queue/todo/N and queue/mess/S/N into queue/spare/ for the
         writer to reuse (queue/spare.py), or unlinks them when they cannot be
         reused; unlinks queue/intd/N, abandoned messages and old queue/pid
         files; nothing else.
Trusts:  nothing: a command must be ``todo/``, ``foop/`` or ``done/`` +
         digits, 7..100 bytes, or it is answered ``x``.

``todo/N`` removes todo/N once send has written info/ and the channel files
(the commit point of preprocessing); ``foop/N`` removes mess/S/N of a
message send has finished. ``done/N`` is for a message send finished in its
first attempt straight from todo/ (send/scheduler.py): todo/N first, since
it is the record that the message is queued, then mess/S/N. A crash between
the two leaves a body with no names, removed by the writer's start-up and
by the sweep below (and send finishes the removal if only the second one
reached the disk). mess/S/N stays if info/S/N exists: a done/N read late
(clean was slow, its send died and a new send already preprocessed todo/N
again) must not take the body of a message that is queued once more.

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

import contextlib
import errno
import os
import selectors
import signal
import socket
import threading
import time

from pyqmail.config import SPLIT, Home
from pyqmail.formats import netstring
from pyqmail.ipc.frames import FrameBuffer, pack
from pyqmail.ipc.listen import peer_allowed, send_uids, unix_listener
from pyqmail.queue import spare
from pyqmail.unix import durable
from pyqmail.unix.logfmt import log

MAX_AGE_S = 36 * 3600  # qmail's age for abandoned pid/ files and messages
SWEEP_EVERY = 30  # requests between pid/ sweeps
MESS_SWEEP_INTERVAL_S = 76431  # qmail-send's "about once a day"
MAX_REQUEST = 200
REPLY_TIMEOUT_S = 30.0


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

    def handle_batch(self, cmds: list[bytes]) -> list[bytes]:
        """Results in order. One fsync of todo/ covers every todo/N removed here."""
        results: list[bytes] = []
        removed_todo: list[int] = []
        for cmd in cmds:
            results.append(self._one(cmd))
            if cmd.startswith((b"todo/", b"done/")) and results[-1] == b"+":
                removed_todo.append(len(results) - 1)
        if removed_todo:
            try:
                durable.sync_dir(self.home.q("todo"))
            except OSError as exc:
                log(f"warning: unable to sync todo/: {exc}")
                for i in removed_todo:
                    results[i] = b"!"
        return results

    def _one(self, cmd: bytes) -> bytes:
        if not 7 <= len(cmd) <= 100:
            return b"x"
        kind, _, digits = cmd.partition(b"/")
        if kind not in (b"todo", b"foop", b"done") or not digits.isdigit():
            return b"x"
        if self.count % SWEEP_EVERY == 0:
            self.sweep_pid()
        self.count += 1
        msg_id = int(digits)
        try:
            if kind == b"done":
                # intd/N became todo/N long ago: no need to look for it
                self._retire_todo(msg_id)
                if not _exists(self.home.split_path("info", msg_id)):
                    self._retire_mess(msg_id)
                return b"+"
            durable.unlink_quiet(self.home.q("intd", str(msg_id)))
            if kind == b"todo":
                self._retire_todo(msg_id)
            else:
                self._retire_mess(msg_id)
        except OSError as exc:
            log(f"warning: unable to clean {cmd.decode(errors='replace')}: {exc}")
            return b"!"
        return b"+"

    def _retire_todo(self, msg_id: int) -> None:
        spare.retire(self.home, self.home.q("todo", str(msg_id)), spare.ENVELOPE, msg_id)

    def _retire_mess(self, msg_id: int) -> None:
        spare.retire(self.home, self.home.split_path("mess", msg_id), spare.BODY, msg_id)

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

    def sweep_mess_forever(self, stop: threading.Event) -> None:
        while True:
            self.sweep_mess()
            if stop.wait(MESS_SWEEP_INTERVAL_S):
                return


class Server:
    """Single-threaded, no event loop (an asyncio process costs ~9 MB more);
    the daily mess sweep runs in a thread of its own.

    Every request read is carried out even when send stops listening.
    Requests that arrive together share one fsync of todo/.
    """

    def __init__(self, home: Home) -> None:
        self.cleaner = Cleaner(home)
        path = home.socket("clean")
        self.allowed = send_uids(path)
        self.listener = unix_listener(path)
        self.sel = selectors.DefaultSelector()
        self.clients: dict[socket.socket, FrameBuffer] = {}
        self.deaf: set[socket.socket] = set()  # clients no longer listening
        self.stopping = False

    def serve(self) -> None:
        stop = threading.Event()
        sweeper = threading.Thread(
            target=self.cleaner.sweep_mess_forever, args=(stop,), daemon=True
        )
        sweeper.start()
        self.sel.register(self.listener, selectors.EVENT_READ)
        try:
            while not self.stopping:
                for key, _ in self.sel.select(timeout=1.0):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self.listener:
                        self._accept()
                    else:
                        self._read(sock)
        finally:
            stop.set()
            for conn in list(self.clients):
                self._drop(conn)
            self.listener.close()

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        if not peer_allowed(conn, self.allowed):
            conn.close()
            return
        conn.settimeout(REPLY_TIMEOUT_S)
        self.clients[conn] = FrameBuffer(MAX_REQUEST)
        self.sel.register(conn, selectors.EVENT_READ)

    def _drop(self, conn: socket.socket) -> None:
        self.sel.unregister(conn)
        del self.clients[conn]
        self.deaf.discard(conn)
        conn.close()

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        try:
            cmds = self.clients[conn].feed(data)
        except netstring.NetstringError as exc:
            log(f"warning: dropped a client: {exc}")
            self._drop(conn)
            return
        results = self.cleaner.handle_batch(cmds)
        if conn in self.deaf or not cmds:
            return
        try:
            conn.sendall(b"".join(pack(c, r) for c, r in zip(cmds, results, strict=True)))
        except TimeoutError:
            self._drop(conn)  # alive but stuck: it asks again for what it lost
        except OSError as exc:
            self.deaf.add(conn)  # send is gone: finish what it asked anyway
            log(f"warning: send stopped listening ({exc}); finishing its requests")


def serve(home: Home) -> None:
    server = Server(home)

    def on_term(_sig: int, _frame: object) -> None:
        server.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    # spare.retire holds a lease for an instant; someone opening the file then
    # would send SIGIO, whose default action is to terminate
    signal.signal(signal.SIGIO, signal.SIG_IGN)
    server.serve()
