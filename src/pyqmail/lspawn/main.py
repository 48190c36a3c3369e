"""qmail-lspawn: fork one local delivery per request, as the recipient.

Runs as: root when started as root (only to become each recipient); the
         invoking user in embedded mode.
Reads:   delivery requests from send on its Unix socket; users/cdb (or users/assign);
         control/defaultdelivery.
Writes:  nothing itself; each forked child delivers as the recipient.
Trusts:  send's requests are parsed strictly (6 fields, bounded sizes);
         the message path must name a file under queue/mess.

Single-threaded, no event loop: it forks from a clean state and reaps its
children with os.waitpid. Two requests for the same (message, recipient)
key never run at once: the second waits for the first child's result, so
a retry after send restarts cannot race the attempt still running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import selectors
import signal
import socket
import traceback
from dataclasses import dataclass, field

from pyqmail.config import Home, read_control
from pyqmail.formats import control, netstring
from pyqmail.formats.address import split_at_last_at
from pyqmail.ipc.frames import FrameBuffer, pack
from pyqmail.ipc.listen import peer_allowed, send_uids, unix_listener
from pyqmail.local.deliver import EXIT_TEMP, LocalJob, deliver
from pyqmail.local.users import AssignCache, resolve
from pyqmail.unix.logfmt import log
from pyqmail.unix.privs import drop_privileges

REPORT_LIMIT = 3000
MESSPATH_RE = re.compile(rb"\A[0-9]{1,3}/[0-9]{1,20}\Z")
KEY_RE = re.compile(rb"\A[0-9]{1,20}\.Q[0-9]{1,20}R[0-9a-f]{8}\Z")
MAX_ADDRESS = 1000


@dataclass(slots=True)
class Child:
    pid: int
    pipe: int
    output: bytearray = field(default_factory=bytearray)
    waiters: list[tuple[socket.socket, bytes]] = field(default_factory=list)
    key: bytes = b""


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
        self.children: dict[int, Child] = {}  # by pipe fd
        self.running: dict[bytes, Child] = {}
        self.assign = AssignCache(home)
        self.stopping = False

    def aliasempty(self) -> str:
        text = read_control(self.home, "defaultdelivery")
        return control.parse_line(text, None) or "./Maildir/"

    def serve(self) -> None:
        self.sel.register(self.listener, selectors.EVENT_READ, "listen")
        while not (self.stopping and not self.children):
            for key, _ in self.sel.select(timeout=1.0):
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
                    self._read_child(key.fd)

    def _drop_conn(self, conn: socket.socket) -> None:
        self.sel.unregister(conn)
        self.conns.pop(conn, None)
        conn.close()

    def _read_conn(self, conn: socket.socket) -> None:
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
        if conn not in self.conns:
            return  # that send is gone; its successor will ask again
        try:
            conn.sendall(pack(job_id, report))
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
        self._spawn(conn, job_id, messpath, sender, rcpt, key, retry == b"1")

    def _spawn(
        self,
        conn: socket.socket,
        job_id: bytes,
        messpath: bytes,
        sender: bytes,
        rcpt: bytes,
        key: bytes,
        retry: bool,
    ) -> None:
        local_b, domain = split_at_last_at(rcpt)
        if domain is None:
            self._reply(conn, job_id, b"DSorry, address must include host name. (#5.1.3)")
            return
        if not local_b:
            self._reply(conn, job_id, b"Kdid 0+0+0\n")  # @domain is the trash address
            return
        local = local_b.decode("utf-8", "surrogateescape")
        try:
            user = resolve(local, self.home, self.assign.get())
        except (OSError, ValueError) as exc:
            self._reply(conn, job_id, f"ZUnable to look up the user: {exc}. (#4.3.0)".encode())
            return
        if user is None:
            self._reply(conn, job_id, b"ZUnable to find alias user! (#4.3.0)")
            return
        job = LocalJob(self.home.q("mess", messpath.decode()), sender, rcpt, key.decode(), retry)
        aliasempty = self.aliasempty()
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: become the recipient, deliver, report on the pipe
            code = EXIT_TEMP
            try:
                os.close(rfd)
                self.listener.close()
                for c in self.conns:
                    c.close()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                if user.uid != os.geteuid():
                    fd = os.open(job.message_path, os.O_RDONLY)
                    job = dataclasses.replace(job, message_fd=fd)
                    drop_privileges(user.uid, user.gid)
                code, text = deliver(self.home, job, user, aliasempty)
                os.write(wfd, text.encode("utf-8", "replace")[: REPORT_LIMIT + 1])
            except BaseException:
                with contextlib.suppress(Exception):
                    os.write(wfd, traceback.format_exc()[-REPORT_LIMIT:].encode())
            finally:
                os._exit(code)
        os.close(wfd)
        child = Child(pid, rfd, key=key + b"\0" + rcpt)
        child.waiters.append((conn, job_id))
        self.children[rfd] = child
        self.running[child.key] = child
        self.sel.register(rfd, selectors.EVENT_READ, "child")

    def _read_child(self, fd: int) -> None:
        child = self.children[fd]
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if data:
            if len(child.output) <= REPORT_LIMIT:
                child.output += data
            return
        self.sel.unregister(fd)
        os.close(fd)
        del self.children[fd]
        self.running.pop(child.key, None)
        _, status = os.waitpid(child.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        report = exit_to_report(code if code >= 0 else None, bytes(child.output))
        for conn, job_id in child.waiters:
            self._reply(conn, job_id, report)


def serve(home: Home) -> None:
    spawner = Spawner(home)

    def on_term(_sig: int, _frame: object) -> None:
        spawner.stopping = True
        with contextlib.suppress(KeyError, ValueError):
            spawner.sel.unregister(spawner.listener)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    spawner.serve()
