"""The client side of one SMTP mail transaction, sans-IO.

Theory of operation. ``ClientTransaction`` is given the envelope, the
message's wire form and what the server offered. ``to_send()`` returns the
bytes to write now; each reply read from the server goes to ``receive()``;
``done`` says when it is over, and ``outcomes`` then holds, per recipient,
the stage that decided its fate and the reply that did.

With PIPELINING (RFC 2920) the whole envelope -- RSET if the previous
transaction was left open, MAIL, every RCPT, DATA -- is one write, and the
message follows once DATA has its 354. Without it the commands go one at a
time and stop at a refused MAIL. Recipients refused with 452 (too many
recipients, RFC 5321 §4.5.3.1.10) go again in a further transaction after
the others' message is through, for as long as each round moves someone on.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from pyqmail.proto.smtp.client import ServerReply, path

TOO_MANY_RCPTS = 452


class Stage(enum.Enum):
    RSET = "RSET"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    DOT = "DOT"  # the reply after the message's final dot
    DIED = "DIED"  # the connection broke before this recipient's fate was known


class TransactionError(Exception):
    """The server put the connection in a state we cannot continue from."""


@dataclass(frozen=True, slots=True)
class Outcome:
    stage: Stage
    reply: ServerReply | None  # None for DIED
    after_dot: bool = False  # DIED with the message sent: it may have been delivered

    @property
    def accepted(self) -> bool:
        return self.stage is Stage.DOT and self.reply is not None and self.reply.code < 300


class ClientTransaction:
    def __init__(
        self,
        sender: bytes,
        recipients: tuple[bytes, ...],
        params: bytes,
        wire: bytes,
        *,
        pipelining: bool,
        rset_first: bool,
    ) -> None:
        self.sender = sender
        self.recipients = recipients
        self.params = params
        self.wire = wire
        self.pipelining = pipelining
        self.needs_rset = rset_first  # after: must the next transaction start with RSET?
        self.broken = False  # after: the connection must not be used again
        self.answered = 0  # replies received so far
        self.messages = 0  # messages the server took (final 2xx)
        self.outcomes: list[Outcome | None] = [None] * len(recipients)
        self._todo = list(range(len(recipients)))
        self._unsent: deque[tuple[Stage, int, bytes]] = deque()
        self._expect: deque[tuple[Stage, int]] = deque()
        self._accepted: list[int] = []
        self._later: list[int] = []
        self._mail_refused = False
        self._on_wire: list[int] = []  # recipients whose message is sent, reply pending
        self.done = False
        self._start_round()

    # -- rounds -----------------------------------------------------------------------

    def _start_round(self) -> None:
        self._accepted, self._later = [], []
        self._mail_refused = False
        for i in self._todo:
            self.outcomes[i] = None
        if self.needs_rset:
            self._unsent.append((Stage.RSET, -1, b"RSET\r\n"))
        self._unsent.append(
            (Stage.MAIL, -1, b"MAIL FROM:" + path(self.sender) + self.params + b"\r\n")
        )
        for i in self._todo:
            self._unsent.append((Stage.RCPT, i, b"RCPT TO:" + path(self.recipients[i]) + b"\r\n"))
        if self.pipelining:
            self._unsent.append((Stage.DATA, -1, b"DATA\r\n"))

    def _end_round(self, delivered: bool) -> None:
        """After the last reply of a round: another round for 452s, or the end."""
        later = self._later
        if delivered and later:
            self._todo = later
            self._start_round()
        else:
            self.done = True

    # -- I/O-facing API -------------------------------------------------------------------

    def to_send(self) -> bytes:
        """Bytes to write now (b"" when waiting for replies)."""
        if self.done or not self._unsent:
            return b""
        if self.pipelining and self._unsent[0][0] is not Stage.DOT:
            batch = []
            for stage, i, cmd in self._unsent:
                if stage is Stage.DOT:
                    break
                self._expect.append((stage, i))
                batch.append(cmd)
            for _ in batch:
                self._unsent.popleft()
            return b"".join(batch)
        if self._expect:
            return b""  # one command at a time without PIPELINING
        stage, i, cmd = self._unsent.popleft()
        self._expect.append((stage, i))
        if stage is Stage.DOT:
            self._on_wire = list(self._accepted)
        return cmd

    def receive(self, reply: ServerReply) -> None:
        if self.done or not self._expect:
            raise TransactionError("a reply nobody asked for")
        self.answered += 1
        stage, i = self._expect.popleft()
        if stage is Stage.RSET:
            if reply.code != 250:
                self.broken = True
                raise TransactionError("RSET refused")
            self.needs_rset = False
        elif stage is Stage.MAIL:
            self._on_mail(reply)
        elif stage is Stage.RCPT:
            self._on_rcpt(i, reply)
        elif stage is Stage.DATA:
            self._on_data(reply)
        else:
            self._on_dot(reply)

    def died(self) -> None:
        """The connection broke: whoever is still undecided gets DIED."""
        for i, out in enumerate(self.outcomes):
            if out is None or i in self._on_wire:
                self.outcomes[i] = Outcome(Stage.DIED, None, after_dot=i in self._on_wire)
        self.broken = True
        self.done = True

    # -- replies ----------------------------------------------------------------------------

    def _on_mail(self, reply: ServerReply) -> None:
        if reply.code < 300:
            return
        self._mail_refused = True
        self.needs_rset = True
        for i in self._todo:
            self.outcomes[i] = Outcome(Stage.MAIL, reply)
        if not self.pipelining:
            self._unsent.clear()
            self.done = True
        elif not self._expect:
            self.done = True

    def _on_rcpt(self, i: int, reply: ServerReply) -> None:
        if self._mail_refused:
            if not self._expect:
                self.done = True
            return
        if reply.code < 300:
            self._accepted.append(i)
        else:
            if reply.code == TOO_MANY_RCPTS:
                self._later.append(i)
            self.outcomes[i] = Outcome(Stage.RCPT, reply)
        last_rcpt = not any(s is Stage.RCPT for s, _i in self._expect) and not any(
            s is Stage.RCPT for s, _i, _c in self._unsent
        )
        if last_rcpt and not self.pipelining:
            if self._accepted:
                self._unsent.append((Stage.DATA, -1, b"DATA\r\n"))
            else:
                self.needs_rset = True
                self._end_round(delivered=False)

    def _on_data(self, reply: ServerReply) -> None:
        if self._mail_refused:
            self.done = True
            return
        if not self._accepted:
            self.needs_rset = True
            if reply.code == 354:
                self.broken = True  # it wants a message for nobody: leave this server
            self._end_round(delivered=False)
            return
        if reply.code >= 400:
            self.needs_rset = True
            for i in self._accepted:
                self.outcomes[i] = Outcome(Stage.DATA, reply)
            self._end_round(delivered=False)
            return
        # the message itself is never pipelined: it goes only after the 354
        self._unsent.append((Stage.DOT, -1, self.wire))

    def _on_dot(self, reply: ServerReply) -> None:
        for i in self._on_wire:
            self.outcomes[i] = Outcome(Stage.DOT, reply)
        self._on_wire = []
        if reply.code == 421:
            self.broken = True
        if reply.code < 300:
            self.messages += 1
        self._end_round(delivered=reply.code < 300 and not self.broken)
