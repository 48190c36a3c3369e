"""qmail-smtpd's decisions: which reply each SMTP event gets.

Pure apart from the queue hand-off, which goes through a submission object
given by the caller. The engine (proto/smtp/server.py) owns syntax and
sequence; this owns relay control, limits and the queue.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

from pyqmail.config import SmtpdConfig
from pyqmail.formats import envelope as env_fmt
from pyqmail.ipc.queue_proto import QueueResult
from pyqmail.net import peer
from pyqmail.net.peer import Client
from pyqmail.proto.smtp import server as eng
from pyqmail.proto.smtp.replies import Reply


class Submission(Protocol):
    async def write(self, data: bytes) -> None: ...
    async def finish(self, envelope_wire: bytes) -> QueueResult: ...
    def abort(self) -> None: ...


class Queue(Protocol):
    async def open(self) -> Submission: ...


def received_line(client: Client, helo: bytes | None, now: float) -> bytes:
    return peer.received_line(client, helo, now, "SMTP")


@dataclass(slots=True)
class Transaction:
    sender: bytes = b""
    recipients: list[bytes] = field(default_factory=list)
    submission: Submission | None = None
    failed: QueueResult | None = None


class SmtpPolicy:
    def __init__(self, cfg: SmtpdConfig, client: Client, queue: Queue) -> None:
        self.cfg = cfg
        self.client = client
        self.queue = queue
        self.txn = Transaction()
        self.helo: bytes | None = None
        self.quit_seen = False
        self.databytes = client.databytes if client.databytes is not None else cfg.databytes

    def greeting(self) -> Reply:
        if not self.cfg.greeting:
            return Reply(421, "unable to read controls (#4.3.0)")
        return Reply(220, f"{self.cfg.greeting} ESMTP")

    def ehlo_lines(self) -> list[str]:
        lines = [self.cfg.greeting, "PIPELINING", "8BITMIME", "CHUNKING"]
        lines.append(f"SIZE {self.databytes}" if self.databytes else "SIZE")
        return lines

    def reset(self) -> None:
        if self.txn.submission is not None:
            self.txn.submission.abort()
        self.txn = Transaction()

    # -- checks -------------------------------------------------------------
    def relay_allowed(self, rcpt: bytes) -> bool:
        return peer.relay_allowed(self.client, self.cfg.rcpthosts, rcpt)

    def bad_sender(self) -> bool:
        s = self.txn.sender.decode("utf-8", "surrogateescape").lower()
        if s in self.cfg.badmailfrom:
            return True
        at = s.rfind("@")
        return at >= 0 and s[at:] in self.cfg.badmailfrom

    def rewrite_literal(self, rcpt: bytes) -> bytes:
        """``box@[local IP]`` -> ``box@localiphost`` before the relay check."""
        at = rcpt.rfind(b"@")
        if at >= 0 and self.client.local_ip:
            dom = rcpt[at + 1 :]
            if dom == b"[" + self.client.local_ip.encode() + b"]":
                return rcpt[:at] + b"@" + self.cfg.localiphost.encode()
        return rcpt

    # -- events ------------------------------------------------------------------
    async def decide(self, ev: object) -> Reply | None:
        if isinstance(ev, eng.Helo):
            self.reset()
            self.helo = ev.name
            if ev.extended:
                return Reply(250, "\n".join(self.ehlo_lines()))
            return Reply(250, self.cfg.greeting)
        if isinstance(ev, eng.Mail):
            return self.mail(ev)
        if isinstance(ev, eng.Rcpt):
            return self.rcpt(ev)
        if isinstance(ev, eng.Data | eng.Bdat):
            return await self.start_data(ev)
        if isinstance(ev, eng.DataChunk):
            await self.chunk(ev.data)
            return None
        if isinstance(ev, eng.EndOfData):
            return await self.end_data(ev.too_big, ev.hops)
        if isinstance(ev, eng.BdatEnd):
            if not ev.last:
                return Reply(250, f"{ev.size} octets received")
            return await self.end_data(ev.too_big, ev.hops)
        if isinstance(ev, eng.BareLineFeed):
            self.reset()
            return Reply(451, "See http://pobox.com/~djb/docs/smtplf.html.")
        if isinstance(ev, eng.Rset):
            self.reset()
            return Reply(250, "flushed")
        if isinstance(ev, eng.Noop):
            return Reply(250, "ok")
        if isinstance(ev, eng.Vrfy):
            return Reply(252, "send some mail, i'll try my best")
        if isinstance(ev, eng.Help):
            return Reply(214, "pyqmail home page: https://github.com/pyqmail")
        if isinstance(ev, eng.Quit):
            self.reset()
            self.quit_seen = True
            return Reply(221, self.cfg.greeting)
        if isinstance(ev, eng.Rejected):
            return ev.reply
        if isinstance(ev, eng.ConnectionClosed):
            self.reset()
            return None
        return Reply(502, "unimplemented (#5.5.1)")

    def mail(self, ev: eng.Mail) -> Reply:
        self.reset()
        for key, value in ev.params:
            if key == b"SIZE" and value is not None and value.isdigit():
                if self.databytes and int(value) > self.databytes:
                    return Reply(
                        552, "sorry, that message size exceeds my databytes limit (#5.3.4)"
                    )
            elif key not in (b"SIZE", b"BODY", b"SMTPUTF8"):
                return Reply(
                    555, f"unsupported parameter {key.decode('ascii', 'replace')} (#5.5.4)"
                )
        self.txn.sender = ev.address
        return Reply(250, "ok")

    def rcpt(self, ev: eng.Rcpt) -> Reply:
        if self.bad_sender():
            return Reply(553, "sorry, your envelope sender is in my badmailfrom list (#5.7.1)")
        rcpt = self.rewrite_literal(ev.address)
        if not self.relay_allowed(rcpt):
            return Reply(553, "sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)")
        if self.client.relayclient:
            rcpt += self.client.relayclient.encode()
        if len(rcpt) >= env_fmt.MAX_ADDRESS_BYTES:
            return Reply(553, "sorry, that address is too long (#5.1.3)")
        self.txn.recipients.append(rcpt)
        return Reply(250, "ok")

    async def start_data(self, ev: eng.Data | eng.Bdat) -> Reply | None:
        if self.txn.submission is None and self.txn.failed is None:
            try:
                self.txn.submission = await self.queue.open()
            except OSError:
                if isinstance(ev, eng.Data):
                    return Reply(451, "qqt failure (#4.3.0)")
                self.txn.failed = QueueResult("Z", "qqt failure (#4.3.0)")
            else:
                await self.txn.submission.write(received_line(self.client, self.helo, time.time()))
        if isinstance(ev, eng.Data):
            return Reply(354, "go ahead")
        return None  # BDAT: the reply comes with BdatEnd

    async def chunk(self, data: bytes) -> None:
        sub = self.txn.submission
        if sub is None or self.txn.failed is not None:
            return
        try:
            await sub.write(data)
        except OSError:
            self.txn.failed = QueueResult("Z", "qq write error or disk full (#4.3.0)")

    async def end_data(self, too_big: bool, hops: int) -> Reply:
        txn, self.txn = self.txn, Transaction()
        sub = txn.submission
        try:
            if too_big:
                return Reply(552, "sorry, that message size exceeds my databytes limit (#5.3.4)")
            if hops >= eng.Limits().max_hops:
                return Reply(554, "too many hops, this message is looping (#5.4.6)")
            if txn.failed is not None or sub is None:
                res = txn.failed or QueueResult("Z", "qqt failure (#4.3.0)")
            else:
                res = await sub.finish(
                    env_fmt.format_wire(env_fmt.Envelope(txn.sender, tuple(txn.recipients)))
                )
                sub = None
            if res.status == "K":
                return Reply(250, f"ok {int(time.time())} qp {res.msg_id}")
            return Reply(554 if res.status == "D" else 451, res.text)
        finally:
            if sub is not None:
                sub.abort()
