"""pyqmail start: open the sockets, launch every component, restart the fallen.

Runs as: root for a system install (to bind ports and hand each component
         its own uid); the invoking user in embedded mode.
Reads:   the command line; control files only to refuse a broken config.
Writes:  nothing in the queue; listening sockets are opened here and passed
         down, so a restarted component finds clients already waiting.
Trusts:  its children only to exit; a crash is logged and the child is
         restarted after a pause that grows while it keeps crashing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from pyqmail.config import Home, QmqpcConfig, RemoteConfig, SendConfig, SmtpdConfig
from pyqmail.layout import queue_ok
from pyqmail.unix import accounts
from pyqmail.unix.limits import limiter
from pyqmail.unix.logfmt import log

STOP_TIMEOUT_S = 4.5
RESTART_MIN_S = 0.2
RESTART_MAX_S = 10.0
LOG_DRAIN_S = 0.3


@dataclass(slots=True)
class Component:
    name: str
    args: list[str]
    fds: list[int] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    restart_at: float = 0.0
    backoff: float = RESTART_MIN_S
    started_at: float = 0.0


def parse_listen(value: str, default_port: int) -> tuple[str, int] | None:
    """``ADDR:PORT`` or ``[v6]:PORT`` or ``off``."""
    if value == "off":
        return None
    if value.startswith("["):
        host, _, port = value[1:].partition("]:")
    else:
        host, _, port = value.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"{value!r}: expected ADDR:PORT or off")
    return host or "127.0.0.1", int(port or default_port)


def bind_tcp(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def bind_unix(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    # anyone may inject, as anyone may run the setuid qmail-queue; the writer
    # records the caller's uid from SO_PEERCRED
    os.chmod(path, 0o666)  # noqa: S103
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(
        self,
        home: Home,
        smtp: list[tuple[str, int]],
        qmtp: list[tuple[str, int]] | None = None,
        qmqp: list[tuple[str, int]] | None = None,
        mini: bool = False,
        submission: list[tuple[str, int]] | None = None,
        pop3: list[tuple[str, int]] | None = None,
    ) -> None:
        self.home = home
        self.smtp = smtp
        self.qmtp = qmtp or []
        self.qmqp = qmqp or []
        self.pop3 = pop3 or []
        self.mini = mini  # no queue here: the queue writer's socket forwards over QMQP
        self.submission = submission or []
        self.smtpd_args: list[str] = []  # e.g. --rules FILE
        self.components: list[Component] = []
        self.sockets: list[socket.socket] = []
        self.stopping = False
        self.log_pipe = (-1, -1)  # read end for the logger, write end for everyone else

    def check_config(self) -> None:
        problem = queue_ok(self.home)
        if problem:
            raise SystemExit(f"pyqmail start: {problem}; run pyqmail init first")
        SendConfig.load(self.home)
        SmtpdConfig.load(self.home)
        RemoteConfig.load(self.home)
        if accounts.component_ids("queue", self.home.queue) is not None:
            blocked = accounts.unreachable_code()
            if blocked:
                raise SystemExit(
                    f"pyqmail start: the qmail users cannot enter {blocked}, on the way to "
                    "Python or pyqmail; install pyqmail where they can (e.g. /opt or /usr/local)"
                )
        if self.mini and not QmqpcConfig.load(self.home).servers:
            raise SystemExit(f"pyqmail start --mini: {self.home.control('qmqpservers')} is empty")
        if self.pop3:
            import ssl

            from pyqmail.config import Pop3Config
            from pyqmail.pop3d.tlsconf import load_context

            cfg = Pop3Config.load(self.home)
            if os.path.exists(cfg.servercert):
                try:
                    load_context(cfg)
                except (OSError, ssl.SSLError) as exc:
                    problem = f"{cfg.servercert}:0: unusable: {exc}"
                    raise SystemExit(f"pyqmail start: {problem}") from None

    def lock(self) -> int:
        fd = os.open(self.home.q("lock", "sendmutex"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SystemExit("pyqmail start: another pyqmail is running on this home") from None
        return fd

    def build(self) -> None:
        base = [sys.executable, "-m"]
        # started without OpenSSL (unix/notls.py): queue, send and lookup
        # speak no TLS; smtpd loads it at its first certificate, rspawn at
        # the first STARTTLS a remote offers. The two busiest run on uvloop
        # when it is installed (notls.py says why not all of them)
        notls = [*base, "pyqmail.unix.notls"]
        fast = [*notls, "--uvloop"]
        home = ["--home", self.home.root]
        self.log_pipe = os.pipe()
        wsock = bind_unix(self.home.writer_socket)
        self.sockets.append(wsock)
        self.components = [
            Component(
                "queue",
                [*fast, "pyqmail.queue", *home, "--fd", str(wsock.fileno())],
                [wsock.fileno()],
            ),
            Component("clean", [*base, "pyqmail.clean", *home]),
            Component("lspawn", [*base, "pyqmail.lspawn", *home]),
            Component("rspawn", [*notls, "pyqmail.rspawn", *home]),
            Component("send", [*notls, "pyqmail.send", *home]),
            Component("lookup", [*notls, "pyqmail.lspawn.lookup", *home]),
        ]
        if self.mini:
            # a mini-qmail node: the writer's socket hands each message to QMQP;
            # lookup stays for AUTH, but local users live on the queue servers
            self.components = [
                Component(
                    "queue",
                    [*base, "pyqmail.qmqpc", *home, "--fd", str(wsock.fileno())],
                    [wsock.fileno()],
                ),
                Component("lookup", [*base, "pyqmail.lspawn.lookup", *home]),
            ]
            self.smtpd_args.append("--no-rcptcheck")
        # by path, without site (-I -S): it imports only os and signal, and so
        # stays at a bare interpreter's memory
        logger_py = os.path.join(os.path.dirname(__file__), "logger.py")
        self.components.insert(0, Component("log", [sys.executable, "-I", "-S", logger_py]))
        for proto, addrs in (("qmtp", self.qmtp), ("qmqp", self.qmqp)):
            if addrs:
                self.add_listener(f"{proto}d", addrs, ["pyqmail.qmtpd", "--proto", proto])
        if self.smtp or self.submission:
            fd_args: list[str] = []
            fds: list[int] = []
            for name, flag, addrs in (
                ("smtp", "--fd", self.smtp),
                ("submission", "--submission-fd", self.submission),
            ):
                for h, p in addrs:
                    s = bind_tcp(h, p)
                    self.sockets.append(s)
                    host, port = s.getsockname()[:2]
                    log(f"status: {name} listening on {host}:{port}")
                    fd_args += [flag, str(s.fileno())]
                    fds.append(s.fileno())
            args = [*fast, "pyqmail.smtpd", *home, *fd_args, *self.smtpd_args]
            self.components.append(Component("smtpd", args, fds))
        if self.pop3:
            self.add_listener("pop3d", self.pop3, ["pyqmail.pop3d"])

    def add_listener(self, name: str, addrs: list[tuple[str, int]], module: list[str]) -> None:
        socks = [bind_tcp(h, p) for h, p in addrs]
        self.sockets.extend(socks)
        fd_args: list[str] = []
        for s in socks:
            host, port = s.getsockname()[:2]
            log(f"status: {name[:-1]} listening on {host}:{port}")
            fd_args += ["--fd", str(s.fileno())]
        args = [sys.executable, "-m", *module, "--home", self.home.root, *fd_args]
        self.components.append(Component(name, args, [s.fileno() for s in socks]))

    def spawn(self, comp: Component) -> None:
        # the uid is set between fork and exec, so a component never runs a
        # line of its own code, nor reads any input, as root
        ids = accounts.component_ids(comp.name, self.home.queue)
        system = ids is not None
        log_r, log_w = self.log_pipe
        is_log = comp.name == "log"
        comp.proc = subprocess.Popen(
            comp.args,
            pass_fds=comp.fds,
            stdin=log_r if is_log else subprocess.DEVNULL,
            stdout=None if is_log else log_w,
            stderr=None if is_log else log_w,
            user=ids.uid if ids else None,
            group=ids.gid if ids else None,
            extra_groups=[ids.gid] if ids else None,
            preexec_fn=limiter(self.home, comp.name in accounts.NETWORK_FACING, system),
        )
        comp.started_at = time.monotonic()
        log(f"status: started {comp.name} pid {comp.proc.pid}")

    def reap(self) -> None:
        now = time.monotonic()
        for comp in self.components:
            if comp.proc is None:
                if now >= comp.restart_at and not self.stopping:
                    self.spawn(comp)
                continue
            code = comp.proc.poll()
            if code is None:
                if now - comp.started_at > 30:
                    comp.backoff = RESTART_MIN_S
                continue
            log(f"alert: {comp.name} pid {comp.proc.pid} exited with status {code}; restarting")
            comp.proc = None
            comp.restart_at = now + comp.backoff
            comp.backoff = min(RESTART_MAX_S, comp.backoff * 2)

    def stop(self) -> None:
        self.stopping = True
        # the listeners first, so nothing new arrives while the queue drains
        order = sorted(
            (c for c in self.components if c.name != "log"),
            key=lambda c: c.name not in ("smtpd", "qmtpd", "qmqpd", "pop3d"),
        )
        for comp in order:
            if comp.proc is not None and comp.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    comp.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for comp in order:
            if comp.proc is None:
                continue
            try:
                comp.proc.wait(timeout=max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"warning: {comp.name} did not stop in time; killing it")
                comp.proc.kill()
                comp.proc.wait()
        self.stop_logger()
        log("status: exiting")

    def stop_logger(self) -> None:
        """Last: close our end of the pipe so the logger drains and sees EOF."""
        os.close(self.log_pipe[1])
        for comp in self.components:
            if comp.name == "log" and comp.proc is not None:
                try:
                    # a delivery program may still hold the pipe: don't wait for it
                    comp.proc.wait(timeout=LOG_DRAIN_S)
                except subprocess.TimeoutExpired:
                    comp.proc.kill()
                    comp.proc.wait()

    def run(self) -> int:
        self.check_config()
        lock_fd = self.lock()
        self.build()
        got: list[int] = []

        def on_signal(sig: int, _frame: object) -> None:
            got.append(sig)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, on_signal)
        signal.signal(signal.SIGALRM, on_signal)
        for comp in self.components:
            self.spawn(comp)
        ports = ", ".join(f"{h}:{p}" for h, p in self.smtp) or "off"
        log(f"status: pyqmail running on {self.home.root}; smtp {ports}")
        while True:
            time.sleep(0.1)
            while got:
                sig = got.pop(0)
                if sig in (signal.SIGTERM, signal.SIGINT):
                    self.stop()
                    os.close(lock_fd)
                    return 0
                for comp in self.components:  # HUP and ALRM go to send, as in qmail
                    # and HUP to those that read send's routing controls too
                    hup = sig == signal.SIGHUP and comp.name in ("lookup", "smtpd")
                    if (comp.name == "send" or hup) and comp.proc is not None:
                        comp.proc.send_signal(sig)
            self.reap()
