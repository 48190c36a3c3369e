"""qmail-qmtpd and qmail-qmqpd behind the built-in listeners.

Runs as: qmaild (the invoking user in embedded mode), after start has bound
         the listening sockets and passed them in.
Reads:   control/{me,rcpthosts,databytes,timeoutsmtpd} and
         control/tcprules.qmtp or control/tcprules.qmqp.
Writes:  nothing; messages stream to the queue writer's socket.
Trusts:  nothing from the network: every netstring is bounded before it is
         read (proto/qmtp). QMQP has no relay control at all, so without
         control/tcprules.qmqp only loopback clients are let in.
Standards: cr.yp.to/proto/qmtp.txt, cr.yp.to/proto/qmqp.html.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from pyqmail.config import Home, SmtpdConfig, read_control
from pyqmail.formats import tcprules
from pyqmail.ipc.listen import wait_for_stop
from pyqmail.net.peer import client_for
from pyqmail.qmtpd.policy import PackagePolicy, writer_queue
from pyqmail.qmtpd.session import serve_packages
from pyqmail.unix.logfmt import log

MAX_SESSIONS = 10_000
PROTOCOLS = {"qmtp": "QMTP", "qmqp": "QMQP"}
# QMQP trusts its client with any recipient; strangers get nothing by default
QMQP_DEFAULT_RULES = "127.:allow\n::1:allow\n:deny\n"


class PackageListener:
    def __init__(self, home: Home, proto: str) -> None:
        self.home = home
        self.protocol = PROTOCOLS[proto]
        self.cfg = SmtpdConfig.load(home)
        name = f"tcprules.{proto}"
        text = read_control(home, name)
        if text is None and proto == "qmqp":
            text = QMQP_DEFAULT_RULES
        self.rules = tcprules.parse_rules(text or "", path=home.control(name))
        self.open_queue = writer_queue(home.writer_socket)
        self.sessions: set[asyncio.Task[None]] = set()

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.sessions.add(task)
        try:
            peer = writer.get_extra_info("peername")
            sockname = writer.get_extra_info("sockname")
            ip = str(peer[0]) if peer else "unknown"
            client = client_for(ip, str(sockname[0]) if sockname else None, self.rules)
            if client is None or len(self.sessions) > MAX_SESSIONS:
                writer.close()  # as tcpserver does for a deny rule: no greeting in QMTP
                return
            policy = PackagePolicy(self.cfg, client, self.open_queue, self.protocol)
            code = await serve_packages(reader, writer, policy, self.cfg.timeout)
            if code == 100:
                log(f"warning: {self.protocol} protocol violation from {ip}; dropped")
        except asyncio.CancelledError:
            return  # shutting down
        finally:
            self.sessions.discard(task)
            with contextlib.suppress(OSError):
                writer.close()


async def serve(home: Home, proto: str, fds: list[int]) -> None:
    listener = PackageListener(home, proto)
    servers = []
    for fd in fds:
        sock = socket.socket(fileno=fd)
        servers.append(await asyncio.start_server(listener.connection, sock=sock))
    log(f"status: {proto}d ready")
    await wait_for_stop()
    for srv in servers:
        srv.close()
    for task in list(listener.sessions):
        task.cancel()
