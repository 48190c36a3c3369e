"""qmail-smtpd behind the built-in listener.

Runs as: qmaild (the invoking user in embedded mode), after start has bound
         the listening socket and passed it in.
Reads:   control/{me,smtpgreeting,rcpthosts,badmailfrom,databytes,
         localiphost,timeoutsmtpd,tcprules.smtp}.
Writes:  nothing; messages stream to the queue writer's socket.
Trusts:  nothing from the network. Every line, size and count is bounded by
         the engine's limits.
Standards: RFC 5321, 1870, 2920, 3030, 6152.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from pyqmail.config import Home, SmtpdConfig, read_control
from pyqmail.formats import tcprules
from pyqmail.ipc.listen import wait_for_stop
from pyqmail.ipc.queue_proto import AsyncSubmission
from pyqmail.net.peer import client_for
from pyqmail.proto.smtp import server as eng
from pyqmail.smtpd.policy import SmtpPolicy, Submission
from pyqmail.smtpd.session import serve_smtp
from pyqmail.unix.logfmt import log

MAX_SESSIONS = 10_000


class WriterQueue:
    def __init__(self, path: str) -> None:
        self.path = path

    async def open(self) -> Submission:
        return await AsyncSubmission.open(self.path, b"network")


class SmtpListener:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.cfg = SmtpdConfig.load(home)
        text = read_control(home, "tcprules.smtp")
        self.rules = tcprules.parse_rules(text or "", path=home.control("tcprules.smtp"))
        self.queue = WriterQueue(home.writer_socket)
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
                with contextlib.suppress(OSError):
                    writer.write(b"421 sorry, not accepting connections from you (#4.7.1)\r\n")
                    await writer.drain()
                writer.close()
                return
            limits = eng.Limits(max_message_bytes=(client.databytes or self.cfg.databytes))
            policy = SmtpPolicy(self.cfg, client, self.queue)
            await serve_smtp(reader, writer, policy, limits, self.cfg.timeout)
        except asyncio.CancelledError:
            return  # shutting down
        finally:
            self.sessions.discard(task)


async def serve(home: Home, fds: list[int]) -> None:
    listener = SmtpListener(home)
    servers = []
    for fd in fds:
        sock = socket.socket(fileno=fd)
        servers.append(await asyncio.start_server(listener.connection, sock=sock))
    log("status: smtpd ready")
    await wait_for_stop()
    for srv in servers:
        srv.close()
    for task in list(listener.sessions):
        task.cancel()
