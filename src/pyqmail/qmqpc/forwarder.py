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
from collections.abc import Callable
from tempfile import SpooledTemporaryFile

from pyqmail.config import Home, QmqpcConfig
from pyqmail.formats.envelope import Envelope
from pyqmail.ipc.listen import wait_for_stop
from pyqmail.ipc.queue_proto import SubmissionServer
from pyqmail.qmqpc.client import send_qmqp
from pyqmail.unix.logfmt import clean, log

SPOOL_IN_MEMORY = 1 << 20
QP_RE = re.compile(rb"qp (\d{1,20})")


class Forwarder:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.cfg = QmqpcConfig.load(home)
        self.server = SubmissionServer(self.open_message)  # the socket's protocol factory
        self._sending: set[asyncio.Task[None]] = set()

    def open_message(self, origin: bytes, uid: int, pid: int) -> Forward:
        return Forward(self)

    async def forward(self, spool: SpooledTemporaryFile[bytes], size: int, env: Envelope) -> bytes:
        spool.seek(0)
        res = await send_qmqp(self.cfg.servers, spool, size, env.sender, env.recipients)
        log(f"info: qmqp {res.server or 'no server'}: exit {res.code}: {clean(res.text)}")
        if res.code == 0:
            qp = QP_RE.search(res.text.encode())
            return b"K" + (qp.group(1) if qp else b"0")
        status = b"D" if 11 <= res.code <= 40 else b"Z"
        return status + res.text.encode()


class Forward:
    """One message: spooled, then sent on by QMQP (a queue_proto Receiver)."""

    def __init__(self, fwd: Forwarder) -> None:
        self.fwd = fwd
        # closed by _send or abort, whichever ends the message
        self.spool: SpooledTemporaryFile[bytes] = SpooledTemporaryFile(SPOOL_IN_MEMORY)  # noqa: SIM115
        self.size = 0

    def chunk(self, data: bytes) -> None:
        self.spool.write(data)
        self.size += len(data)

    def finish(self, env: Envelope, reply: Callable[[bytes], None]) -> None:
        task = asyncio.get_running_loop().create_task(self._send(env, reply))
        self.fwd._sending.add(task)  # held, or the loop may collect it mid-send
        task.add_done_callback(self.fwd._sending.discard)

    async def _send(self, env: Envelope, reply: Callable[[bytes], None]) -> None:
        try:
            answer = await self.fwd.forward(self.spool, self.size, env)
        except OSError as exc:
            log(f"warning: qmqp: {exc}")
            answer = b"Zqq read error (#4.3.0)"
        finally:
            self.spool.close()
        reply(answer)

    def abort(self) -> None:
        self.spool.close()


async def serve(home: Home, listen_fd: int) -> None:
    fwd = Forwarder(home)
    sock = socket.socket(fileno=listen_fd)
    server = await asyncio.get_running_loop().create_unix_server(fwd.server, sock=sock)
    servers = ", ".join(f"{h}:{p}" for h, p in fwd.cfg.servers)
    log(f"status: queue writer ready (mini: QMQP to {servers})")
    await wait_for_stop()
    server.close()
    fwd.server.close()
    log("status: exiting")
