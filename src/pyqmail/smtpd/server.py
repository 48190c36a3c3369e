"""qmail-smtpd behind the built-in listeners: SMTP and submission.

Runs as: qmaild (the invoking user in embedded mode), after start has bound
         the listening sockets and passed them in.
Reads:   control/{me,smtpgreeting,rcpthosts,badmailfrom,databytes,
         localiphost,timeoutsmtpd,timeoutsmtpdsession,maxrcpt,maxlinelength,
         maxconnections,maxconnectionsperip,rcptcheck,morercpthosts,
         servercert.pem,serverkey.pem,tcprules.smtp}.
Writes:  nothing; messages stream to the queue writer's socket, or to the
         $QMAILQUEUE program; recipients and passwords are checked by
         the lookup service (lspawn/lookup.py) over its socket.
Trusts:  nothing from the network. Every line, size, count, connection and
         second is bounded.
Standards: RFC 5321, 1870, 2034, 2920, 3030, 3207, 4954, 6152, 6409, 6531.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
from collections import Counter
from collections.abc import Sequence

from pyqmail.config import Home, SmtpdConfig, read_control
from pyqmail.formats import tcprules
from pyqmail.ipc.listen import wait_for_stop
from pyqmail.ipc.qmailqueue import ProgramQueue
from pyqmail.ipc.queue_proto import WriterPool
from pyqmail.net.peer import Client, client_for
from pyqmail.net.tls import ContextCache
from pyqmail.routing import LocalView
from pyqmail.smtpd.policy import Queue, Service, SmtpPolicy, Submission
from pyqmail.smtpd.session import serve_smtp
from pyqmail.unix.logfmt import log

TOO_MANY = b"421 too many connections, try again later (#4.3.2)\r\n"
TOO_MANY_FROM_YOU = b"421 too many connections from your address (#4.7.0)\r\n"
DENIED = b"421 sorry, not accepting connections from you (#4.7.1)\r\n"


class WriterQueue:
    """The queue writer, over a few connections every session of this smtpd shares."""

    def __init__(self, path: str) -> None:
        self.pool = WriterPool(path, b"network")

    async def open(self) -> Submission:
        return await self.pool.open()


def client_env(client: Client, home: Home) -> dict[str, str]:
    """The environment a $QMAILQUEUE filter sees: tcpserver's variables, as under qmail."""
    tcp = {
        "TCPREMOTEIP": client.remote_ip,
        "TCPREMOTEHOST": client.remote_host,
        "TCPREMOTEINFO": client.remote_info,
        "TCPLOCALIP": client.local_ip,
        "TCPLOCALHOST": client.local_host,
        "RELAYCLIENT": client.relayclient,
    }
    env = dict(os.environ)
    env.update({name: value for name, value in tcp.items() if value is not None})
    env["QMAILHOME"] = home.root
    return env


def queue_for(client: Client, home: Home, writer: WriterQueue | None = None) -> Queue:
    """$QMAILQUEUE's program when the client has one, else the queue writer
    (the listener's shared one, or one of the session's own)."""
    if client.qmailqueue:
        return ProgramQueue([client.qmailqueue], client_env(client, home))
    return writer or WriterQueue(home.writer_socket)


def service_for(
    home: Home, cfg: SmtpdConfig, *, submission: bool, local: LocalView | None = None
) -> Service:
    return Service(
        submission=submission,
        tls=ContextCache(cfg.servercert, cfg.serverkey),
        lookup_socket=home.socket("lookup"),
        local=local,
    )


def load_rules(home: Home, path: str | None) -> dict[str, tcprules.Rule]:
    """--rules FILE when given (it must exist), else control/tcprules.smtp if present."""
    if path is None:
        text = read_control(home, "tcprules.smtp")
        return tcprules.parse_rules(text or "", path=home.control("tcprules.smtp"))
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        return tcprules.parse_rules(fh.read(1 << 24), path=path)


class SmtpListener:
    def __init__(
        self, home: Home, rules_path: str | None = None, *, rcptcheck: bool = True
    ) -> None:
        self.home = home
        self.cfg = SmtpdConfig.load(home)
        if not rcptcheck:
            self.cfg = dataclasses.replace(self.cfg, rcptcheck=False)
        self.rules = load_rules(home, rules_path)
        # reread at SIGHUP, with the lookup service's own copy of these controls
        self.local = LocalView(home) if self.cfg.rcptcheck else None
        self.services = {
            flag: service_for(home, self.cfg, submission=flag, local=self.local)
            for flag in (False, True)
        }
        # $QMAILQUEUE in smtpd's own environment applies to every client
        # that tcprules does not give another one
        qq = os.environ.get("QMAILQUEUE")
        self.env = {"QMAILQUEUE": qq} if qq else {}
        self.sessions: set[asyncio.Task[None]] = set()
        self.per_ip: Counter[str] = Counter()
        self.writer = WriterQueue(home.writer_socket)

    async def _refuse(self, writer: asyncio.StreamWriter, line: bytes) -> None:
        with contextlib.suppress(OSError):
            writer.write(line)
            await writer.drain()
        writer.close()

    async def connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, submission: bool
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        sockname = writer.get_extra_info("sockname")
        ip = str(peer[0]) if peer else "unknown"
        self.sessions.add(task)
        self.per_ip[ip] += 1
        try:
            client = client_for(ip, str(sockname[0]) if sockname else None, self.rules, self.env)
            if client is None:
                await self._refuse(writer, DENIED)
            elif len(self.sessions) > self.cfg.maxconnections:
                await self._refuse(writer, TOO_MANY)
            elif self.per_ip[ip] > self.cfg.maxconnectionsperip:
                await self._refuse(writer, TOO_MANY_FROM_YOU)
            else:
                policy = SmtpPolicy(
                    self.cfg,
                    client,
                    queue_for(client, self.home, self.writer),
                    self.services[submission],
                )
                await serve_smtp(reader, writer, policy)
        except asyncio.CancelledError:
            return  # shutting down
        finally:
            self.sessions.discard(task)
            self.per_ip[ip] -= 1
            if self.per_ip[ip] <= 0:
                del self.per_ip[ip]


async def serve(
    home: Home,
    fds: Sequence[int],
    submission_fds: Sequence[int] = (),
    rules_path: str | None = None,
    *,
    rcptcheck: bool = True,
) -> None:
    listener = SmtpListener(home, rules_path, rcptcheck=rcptcheck)
    if listener.local is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, listener.local.reload)
    servers = []
    for fd, submission in [(fd, False) for fd in fds] + [(fd, True) for fd in submission_fds]:
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)  # never into checkpassword or $QMAILQUEUE

        async def handle(
            r: asyncio.StreamReader, w: asyncio.StreamWriter, sub: bool = submission
        ) -> None:
            await listener.connection(r, w, submission=sub)

        servers.append(await asyncio.start_server(handle, sock=sock))
    log("status: smtpd ready")
    await wait_for_stop()
    for srv in servers:
        srv.close()
    for task in list(listener.sessions):
        task.cancel()
