"""The built-in --pop3 listener: one forked process per POP3 session.

Runs as: root for a system install; the invoking user in embedded mode.
         Each session forks twice from this preloaded process: the half that
         talks to the client (TLS, CAPA, USER, PASS) drops to qmaild before
         reading a byte; its guard keeps root only to check the password,
         then becomes the mailbox owner for the TRANSACTION state.
Reads:   the listening sockets passed by the supervisor (--fd); per session
         control/{me,timeoutpop3d,servercert.pem}, users/password,
         users/assign, and as root getpwnam and /etc/shadow (guard only).
Writes:  the logged-in user's Maildir (as that user), at QUIT only.
Trusts:  nothing from the network. The accepting parent never reads a byte a
         client sends; the guard reads only a bounded netstring login record
         from its own front half, then POP3 commands as the mailbox owner.
Standards: RFC 1939, 2449, 2595.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import socket
import ssl
import time

from pyqmail.auth.accounts import TempAuthError, authenticate
from pyqmail.config import Home, Pop3Config
from pyqmail.formats import netstring
from pyqmail.pop3d.channel import Channel, Timeout
from pyqmail.pop3d.mailbox import Mailbox, MailboxError
from pyqmail.pop3d.relay import relay
from pyqmail.pop3d.session import (
    PopupPolicy,
    authorize,
    checkpassword_input,
    greeting_timestamp,
    login_failed,
    transact,
)
from pyqmail.pop3d.tlsconf import load_context, stls_context
from pyqmail.proto.pop3 import server as eng
from pyqmail.unix import accounts
from pyqmail.unix.logfmt import log, set_component
from pyqmail.unix.privs import PrivilegeError, drop_privileges

MAX_SESSIONS = 200
STOP_GRACE_S = 2.0
MAILDIR = "Maildir"
EXIT_BAD_LOGIN = 1


LOGIN_RECORD_BYTES = 1024  # user, password, timestamp: qmail-popup's sizes and then some


def preauth_ids(home: Home) -> accounts.Ids | None:
    """Who the network-facing half runs as: qmaild in a system home, else unchanged."""
    if os.geteuid() != 0 or not accounts.is_system_home(home.queue):
        return None
    return accounts.lookup("qmaild")


def serve_session(conn: socket.socket, home: Home) -> int:
    """One client, start to end, in its own process.

    Theory of operation: this process forks a *guard* that keeps our uid
    (root in a system install) and then drops to qmaild itself before the
    client sends a byte: TLS, CAPA, USER and PASS are handled without
    privileges. After PASS it hands the login to the guard over a
    socketpair and relays bytes between the client and the guard. The guard
    checks the password, becomes the mailbox owner and runs the
    TRANSACTION state (qmail-popup, checkpassword and qmail-pop3d, in
    one fork each way instead of three execs).
    """
    try:
        remote = str(conn.getpeername()[0])
    except OSError:
        return 1
    cfg = Pop3Config.load(home)
    ctx = stls_context(cfg)
    front, back = socket.socketpair()
    guard = os.fork()
    if guard == 0:
        code = 111
        try:
            front.close()
            conn.close()
            code = run_guard(back, home, cfg, remote)
        except BaseException as exc:  # never return into the session's code
            log(f"alert: pop3 guard crashed: {exc!r}")
        finally:
            os._exit(code)
    back.close()
    ids = preauth_ids(home)
    if ids is not None:
        drop_privileges(ids.uid, ids.gid)
    chan = Channel(conn.fileno(), conn.fileno(), cfg.timeout)
    engine = eng.POP3Server()
    try:
        login = authorize(chan, engine, PopupPolicy(greeting_timestamp(cfg.me), ctx, remote))
        if login is None:
            front.close()
            os.waitpid(guard, 0)
            return 0
        front.sendall(netstring.encode(checkpassword_input(login)) + engine.pending_input())
        status = relay(chan, front, guard)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_BAD_LOGIN:
            login_failed(chan, engine, login, remote)
        elif not os.WIFEXITED(status):
            chan.write(engine.err(b"aack, child crashed"))
        chan.close_tls()
        return 0
    except (Timeout, OSError, ssl.SSLError):
        return 1


def _read_login(chan: Channel) -> tuple[bytes, bytes, bytes] | None:
    """The login record the front sent: (user, password, rest of the stream)."""
    buf = b""
    while True:
        try:
            got = netstring.decode_one(buf, limit=LOGIN_RECORD_BYTES)
        except netstring.NetstringError:
            return None
        if got is not None:
            record, rest = got
            fields = record.split(b"\0")
            return (fields[0], fields[1], rest) if len(fields) >= 3 else None
        data = chan.read()
        if not data:
            return None
        buf += data


def run_guard(sock: socket.socket, home: Home, cfg: Pop3Config, remote: str) -> int:
    """Check the login; as its owner, serve the mailbox. 1 = bad login (nothing said)."""
    chan = Channel(sock.fileno(), sock.fileno(), cfg.timeout)
    try:
        got = _read_login(chan)
        if got is None:
            return EXIT_BAD_LOGIN
        user_b, password, rest = got
        user = user_b.decode("utf-8", "surrogateescape")
        try:
            account = authenticate(home.root, user, password)
        except TempAuthError as exc:
            log(f"pop3: cannot check {user!r}: {exc}")
            chan.write(b"-ERR temporary failure, try again later\r\n")
            return 111
        if account is None:
            return EXIT_BAD_LOGIN
        if os.geteuid() == 0 and account.uid != 0:
            drop_privileges(account.uid, account.gid, account.groups)
        try:
            box = Mailbox.open(os.path.join(account.home, MAILDIR))
        except MailboxError as exc:
            log(f"pop3: {user}: {exc}")
            chan.write(b"-ERR this user has no usable Maildir\r\n")
            return 111
        log(f"pop3: {user} logged in from {remote} (uid {os.geteuid()}, {len(box.messages)} msgs)")
        engine = eng.POP3Server(transaction=True)
        if rest:  # commands the client pipelined behind PASS
            engine.receive_data(rest)
        chan.write(b"+OK \r\n")  # the answer to PASS, as qmail-pop3d gives it
        transact(chan, engine, box)
        return 0
    except (Timeout, OSError) as exc:
        log(f"pop3: session ended: {exc!r}")
        return 0
    except PrivilegeError as exc:
        log(f"alert: pop3: {exc}")
        return 111


class Listener:
    def __init__(self, home: Home, socks: list[socket.socket]) -> None:
        self.home = home
        self.socks = socks
        self.children: set[int] = set()
        self.stopping = False

    def reap(self) -> None:
        while self.children:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)

    def fork_session(self, conn: socket.socket) -> None:
        pid = os.fork()
        if pid == 0:
            code = 111
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                for s in self.socks:
                    s.close()
                code = serve_session(conn, self.home)
            except BaseException as exc:  # a session must never return into the accept loop
                log(f"alert: pop3 session crashed: {exc!r}")
            finally:
                os._exit(code)
        self.children.add(pid)

    def run(self) -> int:
        def on_term(_sig: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        for s in self.socks:
            s.setblocking(False)
        log("status: pop3d ready")
        while not self.stopping:
            self.reap()
            try:
                ready, _, _ = select.select(self.socks, [], [], 0.5)
            except InterruptedError:
                continue
            for s in ready:
                try:
                    conn, _ = s.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                with conn:
                    if len(self.children) >= MAX_SESSIONS:
                        with contextlib.suppress(OSError):
                            conn.send(b"-ERR too many sessions, try again later\r\n")
                        continue
                    conn.setblocking(True)
                    with contextlib.suppress(OSError):
                        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self.fork_session(conn)
        self.stop_children()
        return 0

    def stop_children(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while self.children:
                pid, _ = os.waitpid(-1, 0)
                self.children.discard(pid)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pyqmail.pop3d")
    ap.add_argument("--home")
    ap.add_argument("--fd", type=int, action="append", default=[])
    args = ap.parse_args(argv)
    set_component("pop3d")
    home = Home.from_env(args.home)
    cfg = Pop3Config.load(home)
    if os.path.exists(cfg.servercert):
        try:
            load_context(cfg)
        except (OSError, ssl.SSLError) as exc:
            log(f"fatal: {cfg.servercert}: {exc}")
            return 111
    socks = [socket.socket(fileno=fd) for fd in args.fd]
    return Listener(home, socks).run()
