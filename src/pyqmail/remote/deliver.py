"""qmail-remote: one message, one domain, many recipients.

Runs as: qmailr (the invoking user in embedded mode), inside rspawn.
Reads:   the queued message; control/{me,helohost,smtproutes,smtpport,
         timeoutconnect,timeoutremote,timeoutdns,resolvers,outgoingip,
         tlsdestinations,clientcert.pem,remoteidletime,remoteidlemax,
         moreipme,notipme}.
Writes:  queue/lock/tcpto (the dead-host table).
Trusts:  nothing from DNS or the remote servers; see route.py and smtp.py.

For each job: find the targets (route.py), then try each in turn; a target
that cannot take the message now (no connection, TLS required but missing,
it greets as us...) passes to the next. Connections are reused through the
pool; new ones honour the tcpto table and control/outgoingip. QMTP
(remote/qmtp.py) goes first where qmtproutes or MXPS say so and falls back
to ``Remote.deliver``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import Hashable
from dataclasses import dataclass

from pyqmail.config import RemoteConfig
from pyqmail.formats.tlspolicy import TlsLevel, TlsPolicy, policy_for
from pyqmail.proto.smtp.client import dot_stuff
from pyqmail.remote.ipme import IpMe
from pyqmail.remote.pool import Pool
from pyqmail.remote.route import LazyResolver, RouteError, Target, targets
from pyqmail.remote.smtp import (
    Died,
    Hello,
    NextHost,
    Outgoing,
    Session,
    TlsTrouble,
    send_message,
    start_session,
)
from pyqmail.remote.tcpto import TcpTo
from pyqmail.remote.tls import TlsContexts
from pyqmail.unix.logfmt import log
from pyqmail.unix.readall import read_all

MESSAGE_LIMIT = 1 << 31  # a queued message bigger than any databytes allows

NO_CONNECTION = b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n"
MAX_STALE_RETRIES = 3


@dataclass(frozen=True, slots=True)
class RemoteJob:
    message_path: str
    sender: bytes
    recipients: tuple[bytes, ...]
    domain: str


def worst_of(failures: list[bytes]) -> bytes:
    """The report when no host took the message: temporary if any host was,
    and the most telling text (a host's own words before "no connection")."""
    temporary = [f for f in failures if f.startswith(b"Z")]
    if not failures:
        return NO_CONNECTION
    if temporary:
        told = [f for f in temporary if f != NO_CONNECTION]
        return (told or temporary)[0]
    return failures[0]


class Remote:
    """Everything remote delivery keeps between jobs: resolver, pool, tables."""

    def __init__(self, cfg: RemoteConfig, tcpto_path: str) -> None:
        self.cfg = cfg
        self.resolver = LazyResolver(cfg)
        self.pool = Pool(float(cfg.remoteidletime), cfg.remoteidlemax)
        self.tcpto = TcpTo(tcpto_path)
        self.is_me = IpMe(cfg.moreipme, cfg.notipme)
        self.tls = TlsContexts(cfg.clientcert)
        # a remote greeting with one of our names is a loop; but "localhost"
        # and other dotless names are what misconfigured servers say too
        names = {cfg.me.lower(), cfg.helohost.lower()}
        self.own_names = frozenset(n for n in names if "." in n and not n.startswith("localhost"))

    async def deliver(self, job: RemoteJob) -> list[bytes]:
        """Per-recipient reports, in job.recipients order."""
        n = len(job.recipients)
        try:
            # os.open, not open(): a buffered file costs three more syscalls
            fd = os.open(job.message_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                message = read_all(fd, MESSAGE_LIMIT)
            finally:
                os.close(fd)
        except OSError:
            return [b"ZUnable to read message. (#4.3.0)"] * n
        if message and not message.endswith(b"\n"):
            return [b"DSMTP cannot transfer messages with partial final lines. (#5.6.2)"] * n
        if not self.cfg.helohost:
            return [b"ZUnable to read control files. (#4.3.0)"] * n
        wire = dot_stuff(message)
        msg = Outgoing(job.sender, job.recipients, len(wire) - 3, not message.isascii(), wire)
        try:
            tlist = await targets(job.domain, self.cfg, self.resolver, self.is_me)
        except RouteError as exc:
            return [(exc.status + exc.text).encode()] * n
        # an open connection to any of the domain's hosts first: when the best
        # MX is down, every message would otherwise wait for it again
        for target in tlist:
            reports = await self.reuse_smtp(job.domain, target, msg)
            if reports is not None:
                return reports
        failures: list[bytes] = []
        for target in tlist:
            result = await self.attempt_smtp(job.domain, target, msg)
            if isinstance(result, NextHost):
                failures.append(result.text)
                continue
            return result
        return [worst_of(failures)] * n

    def _key(self, domain: str, target: Target) -> tuple[Hashable, TlsPolicy]:
        policy = policy_for(domain, self.cfg.tlsdestinations)
        # a session is only shared by deliveries that would have accepted it
        return (target.ip, target.port, target.host, policy), policy

    async def reuse_smtp(self, domain: str, target: Target, msg: Outgoing) -> list[bytes] | None:
        """Reports from a pooled connection to target; None when there is none."""
        key, _policy = self._key(domain, target)
        for _ in range(MAX_STALE_RETRIES):
            s = self.pool.take(key)
            if s is None:
                return None
            reports = await send_message(s, msg, reused=True)
            if reports is not None:
                self._release(key, s)
                return reports
            s.close()  # closed while idle: the server never saw this message
        return None

    async def attempt_smtp(
        self, domain: str, target: Target, msg: Outgoing
    ) -> list[bytes] | NextHost:
        """Reports from a new connection to target, or NextHost."""
        key, policy = self._key(domain, target)
        use_tls = policy.level is not TlsLevel.NONE
        while True:
            opened = await self._open(target, policy, use_tls)
            if isinstance(opened, Session):
                break
            if opened is None:  # opportunistic TLS failed: once more in plain text
                use_tls = False
                continue
            return opened
        reports = await send_message(opened, msg, reused=False)
        assert reports is not None
        self._release(key, opened)
        return reports

    def _release(self, key: Hashable, s: Session) -> None:
        if s.usable:
            self.pool.put(key, s)
        else:
            s.close()

    async def _open(
        self, target: Target, policy: TlsPolicy, use_tls: bool
    ) -> Session | NextHost | None:
        """A session ready for MAIL; NextHost; None to retry without TLS."""
        s = await self._connect(target)
        if isinstance(s, NextHost):
            return s
        hello = Hello(
            self.cfg.helohost,
            self.own_names,
            self.tls.get(policy) if use_tls else None,
            policy.required,
        )
        try:
            refused = await start_session(s, hello)
        except Died:
            s.close()
            return NextHost(b"ZConnected to " + s.ip + b" but connection died. (#4.4.2)\n")
        except TlsTrouble as exc:
            s.close()
            if policy.required:
                return NextHost(exc.text)
            log(f"warning: TLS with {target.ip} failed, sending in plain text: {exc.text!r}")
            return None
        if refused is not None:
            s.close()
            return refused
        return s

    def _source(self, ip: str) -> tuple[str, int] | None:
        """control/outgoingip: the first address of the target's family."""
        version = ipaddress.ip_address(ip).version
        for net in self.cfg.outgoingip:
            if net.version == version:
                return str(net.network_address), 0
        return None

    async def _connect(self, target: Target) -> Session | NextHost:
        if self.tcpto.dead(target.ip):
            return NextHost(NO_CONNECTION)
        try:
            async with asyncio.timeout(self.cfg.timeoutconnect):
                reader, writer = await asyncio.open_connection(
                    target.ip, target.port, local_addr=self._source(target.ip)
                )
        except TimeoutError:
            self.tcpto.record(target.ip, timed_out=True)
            return NextHost(NO_CONNECTION)
        except OSError as exc:
            if self._source(target.ip) is not None:
                log(f"warning: unable to connect from control/outgoingip to {target.ip}: {exc}")
            self.tcpto.record(target.ip, timed_out=False)
            return NextHost(NO_CONNECTION)
        self.tcpto.record(target.ip, timed_out=False)
        self.pool.opened += 1
        return Session(reader, writer, float(self.cfg.timeoutremote), target)
