"""A mini-qmail node's queue: the queue writer's socket, forwarding over QMQP.

Runs as: qmailq (the invoking user in embedded mode), in place of the queue
         writer when ``pyqmail start --mini``.
Reads:   its Unix socket (queue/lock/queue.sock), in the queue writer's
         protocol (ipc/queue_proto), so smtpd, qmtpd and qmail-queue work
         unchanged; control/qmqpservers.
Writes:  nothing durable: a message waits in a spooled temporary file only
         until a QMQP server has it.
Trusts:  no client: frames are length-bounded and the envelope is parsed
         strictly, exactly as the queue writer does.

Acknowledgement: a client hears K only after a QMQP server said K, which
that server says after its own fsync. Anything else is Z or D, and the
client (smtpd: 451/554; qmail-queue: non-zero exit) keeps the mail.
"""

from __future__ import annotations

import asyncio
import re
import socket
import tempfile

from pyqmail.config import Home, QmqpcConfig
from pyqmail.ipc import queue_proto
from pyqmail.ipc.listen import wait_for_stop
from pyqmail.ipc.queue_proto import CHUNK_LIMIT
from pyqmail.qmqpc.client import send_qmqp
from pyqmail.unix.logfmt import clean, log

SPOOL_IN_MEMORY = 1 << 20
QP_RE = re.compile(rb"qp (\d{1,20})")


class Forwarder:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.cfg = QmqpcConfig.load(home)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await queue_proto.answer(writer, self._forward(reader))

    async def _forward(self, reader: asyncio.StreamReader) -> bytes:
        await queue_proto.read_origin(reader)
        with tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY) as spool:
            size = await queue_proto.read_body(reader, spool.write)
            env = await queue_proto.read_envelope(reader)
            spool.seek(0)
            res = await send_qmqp(self.cfg.servers, spool, size, env.sender, env.recipients)
        log(f"info: qmqp {res.server or 'no server'}: exit {res.code}: {clean(res.text)}")
        if res.code == 0:
            qp = QP_RE.search(res.text.encode())
            return b"K" + (qp.group(1) if qp else b"0")
        status = b"D" if 11 <= res.code <= 40 else b"Z"
        return status + res.text.encode()


async def serve(home: Home, listen_fd: int) -> None:
    fwd = Forwarder(home)
    sock = socket.socket(fileno=listen_fd)
    server = await asyncio.start_unix_server(fwd.handle, sock=sock, limit=CHUNK_LIMIT + 64)
    servers = ", ".join(f"{h}:{p}" for h, p in fwd.cfg.servers)
    log(f"status: queue writer ready (mini: QMQP to {servers})")
    await wait_for_stop()
    server.close()
    log("status: exiting")
