"""qmail-qmtpd's and qmail-qmqpd's decisions: which K/Z/D each package gets.

The engine (proto/qmtp) owns the wire; this owns relay control, the size
limit, address checks and the queue hand-off, with qmail's texts
(qmail-programs §3). A K is only ever said after the queue writer said K,
which it says after fsync.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from pyqmail.config import SmtpdConfig
from pyqmail.formats import envelope as env_fmt
from pyqmail.ipc.queue_proto import AsyncSubmission, QueueResult, WriterPool
from pyqmail.net import peer
from pyqmail.proto.qmtp.events import Package

TOO_BIG = b"Dsorry, that message size exceeds my databytes limit (#5.3.4)"
BAD_RCPT = b"Dsorry, I can't handle that recipient (#5.1.3)"
NOT_RCPTHOST = b"Dsorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"
BAD_SENDER = b"Dunacceptable sender (#5.1.7)"
BAD_ADDRESS = b"Dsorry, I can't accept addresses like that (#5.1.3)"
QQT_FAILURE = b"Zqqt failure (#4.3.0)"

OpenQueue = Callable[[], Awaitable[AsyncSubmission]]


def writer_queue(path: str) -> OpenQueue:
    """Open submissions to the writer, over connections every session shares."""
    return WriterPool(path, b"network").open


class PackagePolicy:
    """One connection's packages. protocol is "QMTP" or "QMQP"."""

    def __init__(
        self, cfg: SmtpdConfig, client: peer.Client, open_queue: OpenQueue, protocol: str
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.open_queue = open_queue
        self.protocol = protocol
        self.sub: AsyncSubmission | None = None
        self.failed: bytes | None = None

    @property
    def databytes(self) -> int:
        return self.client.databytes if self.client.databytes is not None else self.cfg.databytes

    def abort(self) -> None:
        if self.sub is not None:
            self.sub.abort()
            self.sub = None

    async def start(self) -> None:
        """A package began: open the queue and write our Received line."""
        self.abort()
        self.failed = None
        try:
            self.sub = await self.open_queue()
            await self.sub.write(peer.received_line(self.client, None, time.time(), self.protocol))
        except OSError:
            self.abort()
            self.failed = QQT_FAILURE

    async def chunk(self, data: bytes) -> None:
        if self.sub is None:
            return
        try:
            await self.sub.write(data)
        except OSError:
            self.abort()
            self.failed = b"Zqq write error or disk full (#4.3.0)"

    async def _queue(self, sender: bytes, rcpts: list[bytes]) -> bytes:
        sub, self.sub = self.sub, None
        if sub is None:
            return self.failed or QQT_FAILURE
        res: QueueResult = await sub.finish(
            env_fmt.format_wire(env_fmt.Envelope(sender, tuple(rcpts)))
        )
        if res.status == "K":
            return b"Kok %d qp %d" % (int(time.time()), res.msg_id)
        return (res.status + res.text).encode()

    async def package(self, pkg: Package) -> list[bytes]:
        """The responses the package is owed: one per recipient (QMTP) or one (QMQP)."""
        if self.protocol == "QMQP":
            return [await self._qmqp(pkg)]
        return await self._qmtp(pkg)

    async def _qmqp(self, pkg: Package) -> bytes:
        # qmail-qmqpd: no relay control; the client is trusted by tcprules
        if pkg.too_big:
            result = TOO_BIG
        elif not pkg.sender_ok or not all(r.acceptable for r in pkg.recipients):
            result = BAD_ADDRESS
        else:
            return await self._queue(pkg.sender, [r.address for r in pkg.recipients])
        self.abort()
        return result

    async def _qmtp(self, pkg: Package) -> list[bytes]:
        relay = (self.client.relayclient or "").encode()
        failures: list[bytes | None] = []
        accepted: list[bytes] = []
        for r in pkg.recipients:
            if not r.acceptable or len(r.address) + len(relay) >= env_fmt.MAX_ADDRESS_BYTES:
                failures.append(BAD_RCPT)
            elif not peer.relay_allowed(self.client, self.cfg.rcpthosts, r.address):
                failures.append(NOT_RCPTHOST)
            else:
                failures.append(None)
                accepted.append(r.address + relay)
        # qmail-qmtpd: databytes outranks the sender check, both outrank the queue
        if pkg.too_big:
            result = TOO_BIG
        elif not pkg.sender_ok:
            result = BAD_SENDER
        elif accepted:
            result = await self._queue(pkg.sender, accepted)
        else:
            result = b""  # every recipient already has its own failure
        self.abort()
        return [f if f is not None else result for f in failures]
