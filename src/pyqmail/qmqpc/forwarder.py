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
import contextlib
import re
import socket
import tempfile

from pyqmail.config import Home, QmqpcConfig
from pyqmail.formats import envelope as env_fmt
from pyqmail.formats import netstring
from pyqmail.ipc.frames import read_frame
from pyqmail.ipc.listen import wait_for_stop
from pyqmail.ipc.queue_proto import CHUNK_LIMIT, MAGIC, ORIGINS
from pyqmail.qmqpc.client import send_qmqp
from pyqmail.unix.logfmt import clean, log

MAX_MESSAGE_BYTES = 1 << 31  # the queue writer's limit
ENVELOPE_LIMIT = 64 << 20
SPOOL_IN_MEMORY = 1 << 20
CLIENT_TIMEOUT_S = 24 * 3600
QP_RE = re.compile(rb"qp (\d{1,20})")


class Refused(Exception):
    def __init__(self, reply: bytes) -> None:
        super().__init__(reply)
        self.reply = reply


class Forwarder:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.cfg = QmqpcConfig.load(home)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(CLIENT_TIMEOUT_S):
                reply = await self._forward(reader)
        except Refused as exc:
            reply = exc.reply
        except (TimeoutError, OSError, asyncio.IncompleteReadError, netstring.NetstringError):
            reply = b"Zqq read error (#4.3.0)"
        with contextlib.suppress(OSError):
            writer.write(netstring.encode(reply))
            await writer.drain()
            writer.close()

    async def _forward(self, reader: asyncio.StreamReader) -> bytes:
        header = await read_frame(reader, 64)
        if header is None or not header.startswith(MAGIC + b"\0"):
            raise Refused(b"Zqq internal bug (#4.3.0)")
        if header[len(MAGIC) + 1 :] not in ORIGINS:
            raise Refused(b"Zqq internal bug (#4.3.0)")
        with tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY) as spool:
            size = 0
            while True:
                chunk = await read_frame(reader, CHUNK_LIMIT)
                if chunk is None:
                    raise Refused(b"Zqq read error (#4.3.0)")
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_MESSAGE_BYTES:
                    raise Refused(b"Dqq permanent problem (#5.3.0)")
                spool.write(chunk)
            wire = await read_frame(reader, ENVELOPE_LIMIT)
            if wire is None:
                raise Refused(b"Zqq read error (#4.3.0)")
            try:
                env = env_fmt.parse_wire(wire)
            except env_fmt.EnvelopeError as exc:
                if exc.code == 11:
                    raise Refused(b"Denvelope address too long for qq (#5.1.3)") from exc
                raise Refused(b"Zqq internal bug (#4.3.0)") from exc
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
