"""qmail-smtpd's decisions: which reply each SMTP event gets.

Pure apart from two hand-offs given by the caller or named in Service: the
queue (writer socket or $QMAILQUEUE) and the lookup service (RCPT checks,
passwords). The engine (proto/smtp/server.py) owns syntax and sequence;
this owns relay control, AUTH, TLS policy, limits and the queue.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from pyqmail.config import SmtpdConfig
from pyqmail.formats import envelope as env_fmt
from pyqmail.ipc import lookup
from pyqmail.ipc.queue_proto import QueueResult
from pyqmail.net import peer
from pyqmail.net.peer import Client
from pyqmail.net.tls import ContextCache
from pyqmail.proto.smtp import auth as sasl
from pyqmail.proto.smtp import replies
from pyqmail.proto.smtp import server as eng
from pyqmail.proto.smtp.replies import Reply, with_status_code
from pyqmail.unix.logfmt import clean, log

if TYPE_CHECKING:
    import ssl  # loaded with the first certificate (net/tls.py)

    from pyqmail.routing import LocalView

MAX_AUTH_FAILURES = 3  # then 421 and hang up
AUTH_FAIL_DELAY_S = 1.0  # before each "wrong password" reply: slows guessing

AUTH_REQUIRED = Reply(530, "authentication required (#5.7.0)")
ENCRYPTION_REQUIRED = Reply(
    538, "encryption required for requested authentication mechanism (#5.7.11)"
)
AUTH_TEMPFAIL = Reply(454, "temporary authentication failure (#4.7.0)")
AUTH_TOO_MANY = Reply(421, "too many authentication failures, closing connection (#4.7.0)")
NEEDS_SMTPUTF8 = Reply(553, "non-ASCII address requires SMTPUTF8 (#5.6.7)")
BAD_BODY = Reply(501, "BODY must be 7BIT or 8BITMIME (#5.5.4)")
HELP = Reply(214, "pyqmail home page: https://github.com/pyqmail")


class Submission(Protocol):
    async def write(self, data: bytes) -> None: ...
    async def finish(self, envelope_wire: bytes) -> QueueResult: ...
    def abort(self) -> None: ...


class Queue(Protocol):
    async def open(self) -> Submission: ...


@dataclass(frozen=True, slots=True)
class Service:
    """What the listener offers on top of qmail-smtpd."""

    submission: bool = False  # RFC 6409: MAIL needs AUTH first
    tls: ContextCache | None = None  # STARTTLS offered when it yields a context
    lookup_socket: str | None = None  # the lookup service: RCPT checks and AUTH
    local: LocalView | None = None  # which recipients the RCPT check is for (None: all)


@lru_cache(maxsize=64)
def session_reply(code: int, text: str) -> Reply:
    """A reply every session gives in the same words (greeting, EHLO, QUIT): made once."""
    return Reply(code, text)


def received_line(client: Client, helo: bytes | None, now: float) -> bytes:
    return peer.received_line(client, helo, now, "SMTP")


@dataclass(slots=True)
class Transaction:
    sender: bytes = b""
    recipients: list[bytes] = field(default_factory=list)
    submission: Submission | None = None
    failed: QueueResult | None = None
    utf8: bool = False  # MAIL FROM carried SMTPUTF8 (RFC 6531)


class SmtpPolicy:
    def __init__(
        self, cfg: SmtpdConfig, client: Client, queue: Queue, service: Service = Service()
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.queue = queue
        self.service = service
        self.txn = Transaction()
        self.helo: bytes | None = None
        self.esmtp = False  # EHLO accepted: ENHANCEDSTATUSCODES apply (RFC 2034)
        self.quit_seen = False
        self.databytes = client.databytes if client.databytes is not None else cfg.databytes
        self.tls_context: ssl.SSLContext | None = None  # set when 220 answers STARTTLS
        self.tls_active = False
        self.auth_user: bytes | None = None
        self.auth_failures = 0
        self._sasl: sasl.SaslExchange | None = None

    def limits(self) -> eng.Limits:
        """The engine's limits for this client, from control files and tcprules."""
        return eng.Limits(
            max_line_bytes=self.cfg.maxlinelength,
            max_message_bytes=self.databytes,
            max_recipients=self.cfg.maxrcpt,
        )

    def greeting(self) -> Reply:
        if not self.cfg.greeting:
            return replies.CONTROLS_UNREADABLE
        return session_reply(220, f"{self.cfg.greeting} ESMTP")

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.service.tls is None:
            return None
        try:
            return self.service.tls.get()
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: no ssl import here
            log(f"warning: smtpd cannot use control/servercert.pem: {clean(str(exc))}")
            return None

    @property
    def auth_offered(self) -> bool:
        # RFC 4954 §4 / RFC 6409: passwords never cross the network in clear;
        # loopback clients are this host, where nobody can listen in.
        return self.service.submission and (self.tls_active or self.client.loopback)

    def ehlo_lines(self) -> list[str]:
        lines = [self.cfg.greeting, "PIPELINING", "8BITMIME"]
        lines.append(f"SIZE {self.databytes}" if self.databytes else "SIZE")
        lines += ["ENHANCEDSTATUSCODES", "SMTPUTF8", "CHUNKING"]
        if not self.tls_active and self._tls_context() is not None:
            lines.append("STARTTLS")
        if self.auth_offered and self.auth_user is None:
            lines.append("AUTH " + " ".join(m.decode() for m in sasl.MECHANISMS))
        return lines

    def reset(self) -> None:
        if self.txn.submission is not None:
            self.txn.submission.abort()
        self.txn = Transaction()

    # -- checks -------------------------------------------------------------
    def relay_allowed(self, rcpt: bytes) -> bool:
        if self.auth_user is not None:
            return True  # authenticated clients may relay (RFC 4954 §1)
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
            self.esmtp = ev.extended
            if ev.extended:
                return session_reply(250, "\n".join(self.ehlo_lines()))
            return session_reply(250, self.cfg.greeting)
        if isinstance(ev, eng.StartTls):
            return self.starttls()
        # a table, not a chain of isinstance(): one lookup per command; the
        # engine's events are final classes, so their type says it all
        now = _DECIDED_AT_ONCE.get(type(ev))
        reply = now(self, ev) if now is not None else await self._decide(ev)
        if reply is None or not self.esmtp:
            return reply
        default = _STATUS_IF_POSITIVE.get(type(ev)) if reply.is_positive else None
        return with_status_code(reply, default)

    def starttls(self) -> Reply:
        ctx = self._tls_context()
        if ctx is None:
            return replies.TLS_UNAVAILABLE
        # RFC 3207 §4.2: everything learned before the handshake is forgotten
        self.reset()
        self.helo = None
        self.esmtp = False
        self.auth_user = None
        self._sasl = None
        self.tls_context = ctx
        self.tls_active = True
        return replies.TLS_READY

    async def _decide(self, ev: object) -> Reply | None:
        """The events whose answer waits for the lookup service or the queue."""
        if isinstance(ev, eng.Rcpt):
            return await self.rcpt(ev)
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
        if isinstance(ev, eng.Auth):
            return await self.auth_start(ev)
        if isinstance(ev, eng.AuthLine):
            if self._sasl is None:
                return sasl.CANCELLED
            return await self.auth_step(self._sasl.step(ev.line))
        return replies.UNIMPLEMENTED

    def bare_line_feed(self, ev: eng.BareLineFeed) -> Reply:
        self.reset()
        return replies.BARE_LF

    def rset(self, ev: eng.Rset) -> Reply:
        self.reset()
        return replies.FLUSHED

    def quit(self, ev: eng.Quit) -> Reply:
        self.reset()
        self.quit_seen = True
        return session_reply(221, self.cfg.greeting)

    def closed(self, ev: eng.ConnectionClosed) -> None:
        self.reset()

    # -- AUTH (RFC 4954) ----------------------------------------------------------
    async def auth_start(self, ev: eng.Auth) -> Reply:
        if not self.service.submission:
            return replies.UNIMPLEMENTED  # qmail-smtpd's answer; AUTH lives on submission
        if not self.auth_offered:
            return ENCRYPTION_REQUIRED
        self._sasl = sasl.SaslExchange(ev.mechanism, ev.initial)
        return await self.auth_step(self._sasl.start())

    async def auth_step(self, step: sasl.Step) -> Reply:
        if isinstance(step, sasl.Challenge):
            return Reply(334, step.text)
        self._sasl = None
        if isinstance(step, sasl.Failed):
            if step.reply is not sasl.REFUSED:
                return step.reply
            return await self.auth_failed(b"")
        stamp = f"<{os.getpid()}.{int(time.time())}@{self.cfg.me}>".encode()
        answer = lookup.UNREACHABLE
        if self.service.lookup_socket is not None:
            answer = await lookup.ask_auth(
                self.service.lookup_socket, step.user, step.password, stamp
            )
        user = clean(step.user.decode("utf-8", "replace"))
        if answer[:1] == b"K":
            self.auth_user = step.user
            log(f"info: smtpd auth ok user {user} from {self.client.remote_ip}")
            return Reply(235, "ok, go ahead (#2.7.0)")
        if answer[:1] == b"Z":
            log(f"warning: smtpd auth tempfail user {user} from {self.client.remote_ip}")
            return AUTH_TEMPFAIL
        return await self.auth_failed(step.user)

    async def auth_failed(self, user: bytes) -> Reply:
        self.auth_failures += 1
        name = clean(user.decode("utf-8", "replace"))
        log(f"warning: smtpd auth failed user {name} from {self.client.remote_ip}")
        await asyncio.sleep(AUTH_FAIL_DELAY_S)
        if self.auth_failures >= MAX_AUTH_FAILURES:
            return AUTH_TOO_MANY
        return replies.AUTH_FAILED

    # -- the envelope ----------------------------------------------------------
    def mail(self, ev: eng.Mail) -> Reply:
        self.reset()
        if self.service.submission and self.auth_user is None:
            return AUTH_REQUIRED
        utf8 = False
        for key, value in ev.params:
            if key == b"SIZE" and value is not None and value.isdigit():
                if self.databytes and int(value) > self.databytes:
                    return Reply(
                        552, "sorry, that message size exceeds my databytes limit (#5.3.4)"
                    )
            elif key == b"BODY":
                if value is None or value.upper() not in (b"7BIT", b"8BITMIME"):
                    return BAD_BODY
            elif key == b"SMTPUTF8" and value is None:
                utf8 = True
            elif key == b"AUTH":
                pass  # RFC 4954 §5: the original submitter; we keep our own record
            else:
                return Reply(
                    555, f"unsupported parameter {key.decode('ascii', 'replace')} (#5.5.4)"
                )
        if not utf8 and not ev.address.isascii():
            return NEEDS_SMTPUTF8
        self.txn.sender = ev.address
        self.txn.utf8 = utf8
        return replies.OK

    async def rcpt(self, ev: eng.Rcpt) -> Reply:
        if ev.params:
            key = ev.params[0][0].decode("ascii", "replace")
            return Reply(555, f"unsupported parameter {key} (#5.5.4)")
        if not self.txn.utf8 and not ev.address.isascii():
            return NEEDS_SMTPUTF8
        if self.bad_sender():
            return Reply(553, "sorry, your envelope sender is in my badmailfrom list (#5.7.1)")
        rcpt = self.rewrite_literal(ev.address)
        if not self.relay_allowed(rcpt):
            return Reply(553, "sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)")
        if (
            self.cfg.rcptcheck
            and self.service.lookup_socket is not None
            and (self.service.local is None or self.service.local.may_be_local(rcpt))
        ):
            answer = await lookup.ask_rcpt(self.service.lookup_socket, rcpt)
            text = answer[1:].decode("utf-8", "replace")
            if answer[:1] == b"D":
                return Reply(550, text)
            if answer[:1] == b"Z":
                return Reply(451, text)
        if self.client.relayclient:
            rcpt += self.client.relayclient.encode()
        if len(rcpt) >= env_fmt.MAX_ADDRESS_BYTES:
            return Reply(553, "sorry, that address is too long (#5.1.3)")
        self.txn.recipients.append(rcpt)
        return replies.OK

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
            return replies.GO_AHEAD
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


# Events answered without waiting for anything (SmtpPolicy.decide).
_DECIDED_AT_ONCE: dict[type, Callable[[SmtpPolicy, Any], Reply | None]] = {
    eng.Mail: SmtpPolicy.mail,
    eng.Rset: SmtpPolicy.rset,
    eng.Quit: SmtpPolicy.quit,
    eng.Noop: lambda policy, ev: replies.OK,
    eng.Vrfy: lambda policy, ev: replies.VRFY,
    eng.Help: lambda policy, ev: HELP,
    eng.Rejected: lambda policy, ev: ev.reply,
    eng.Unknown: lambda policy, ev: replies.UNIMPLEMENTED,
    eng.BareLineFeed: SmtpPolicy.bare_line_feed,
    eng.ConnectionClosed: SmtpPolicy.closed,
}
_STATUS_IF_POSITIVE = {eng.Mail: "2.1.0", eng.Rcpt: "2.1.5"}  # RFC 3463 §3.2
