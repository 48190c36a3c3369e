"""lookup: answer smtpd's questions that need lspawn's view of the system.

Is a local recipient known, before smtpd says 250 (so nothing is accepted
that would bounce later)? Is a user's password right (SMTP AUTH)?

Runs as: root in a system install (like lspawn, whose lookups it shares:
         users/assign, passwd, and .qmail files in homes the unprivileged
         smtpd may not read; and the checkpassword program, which needs
         root to read users/password and /etc/shadow); the invoking user in
         embedded mode.
Reads:   control/{me,locals,percenthack,virtualdomains,envnoathost,
         checkpassword} (again on SIGHUP), users/assign, passwd; stats
         .qmail files, never opens or runs anything in a user's home.
Writes:  nothing; answers on queue/lock/lookup.sock.
Trusts:  only root, itself and qmaild (checked once per connection with
         SO_PEERCRED): a password oracle is for smtpd alone. Questions are
         bounded netstrings, parsed strictly; a malformed one closes the
         connection, as does IDLE_TIMEOUT_S without a question (ipc/lookup.py).

Answers follow the mail's later fate exactly: the address is rewritten by
the same routing.classify send uses, and judged by local.users.no_mailbox,
which uses the same resolve() and .qmail search lspawn uses.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import deque
from typing import cast

from pyqmail.auth.runner import Verdict, check_password
from pyqmail.config import Home, SendConfig, SmtpdConfig
from pyqmail.formats import netstring
from pyqmail.formats.address import split_at_last_at
from pyqmail.ipc import lookup as proto
from pyqmail.ipc.frames import FrameBuffer, pack
from pyqmail.ipc.listen import peer_allowed, unix_listener, wait_for_stop
from pyqmail.local.users import AssignCache, no_mailbox
from pyqmail.routing import classify
from pyqmail.unix import accounts
from pyqmail.unix.entry import component_main
from pyqmail.unix.logfmt import log

NO_MAILBOX = b"Dsorry, no mailbox here by that name (#5.1.1)"


def smtpd_uids(home: Home) -> frozenset[int]:
    uids = {0, os.geteuid()}
    qmaild = accounts.lookup("qmaild")
    if qmaild is not None and accounts.is_system_home(home.queue):
        uids.add(qmaild.uid)
    return frozenset(uids)


class Lookup:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.cfg = SendConfig.load(home)
        self.checkpassword = SmtpdConfig.load(home).checkpassword
        self.assign = AssignCache(home)
        self.allowed = smtpd_uids(home)
        self.connections: set[LookupConnection] = set()

    def reload(self) -> None:
        try:
            self.cfg = SendConfig.load(self.home)
            self.checkpassword = SmtpdConfig.load(self.home).checkpassword
        except (OSError, ValueError) as exc:
            log(f"warning: lookup keeps its old control files: {exc}")

    def rcpt(self, address: bytes) -> bytes:
        kind, rewritten = classify(address, self.cfg)
        if kind != "local":
            return b"K"  # relaying is smtpd's rcpthosts question, not ours
        local, _domain = split_at_last_at(rewritten)
        if not local:
            return b"K"  # "@domain": lspawn's trash address, delivered to nobody
        try:
            assign = self.assign.get()
        except (OSError, ValueError) as exc:
            log(f"warning: lookup cannot read users/assign: {exc}")
            return b"Zunable to read users/assign (#4.3.0)"
        if no_mailbox(local.decode("utf-8", "surrogateescape"), self.home, assign):
            return NO_MAILBOX
        return b"K"

    async def auth(self, q: proto.AuthQuestion) -> bytes:
        env = dict(os.environ, QMAILHOME=self.home.root)
        verdict = await check_password(self.checkpassword, q.user, q.password, q.timestamp, env)
        if verdict is Verdict.ACCEPT:
            return b"K"
        if verdict is Verdict.REJECT:
            return b"Dauthorization failed (#5.7.8)"
        return b"Ztemporary authentication failure (#4.7.0)"


class LookupConnection(asyncio.Protocol):
    """One smtpd connection: questions answered in order, one at a time.

    RCPT answers are computed as the question arrives. An AUTH question
    runs checkpassword: reading pauses until it is answered, so answers
    stay in the order of the questions.
    """

    def __init__(self, lookup: Lookup) -> None:
        self.lookup = lookup
        self.loop = asyncio.get_running_loop()
        self.frames = FrameBuffer(proto.MAX_REQUEST_BYTES)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[bytes] = deque()
        self.auth_task: asyncio.Task[None] | None = None
        self.last = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        # uvloop's transports do not inherit from asyncio's classes: no isinstance
        transport = cast(asyncio.Transport, base)
        sock = transport.get_extra_info("socket")
        if sock is None or not peer_allowed(sock, self.lookup.allowed):
            transport.close()
            return
        self.transport = transport
        self.lookup.connections.add(self)
        self.timer = self.loop.call_at(self.last + proto.IDLE_TIMEOUT_S, self.idle_check)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self.last = self.loop.time()
        try:
            self.pending.extend(self.frames.feed(data))
        except netstring.NetstringError:
            self.close()  # a broken request gets no answer; smtpd then says 4xx
            return
        self.answer_pending()

    def answer_pending(self) -> None:
        transport = self.transport
        while self.pending and self.auth_task is None and transport is not None:
            try:
                q = proto.decode_request(self.pending.popleft())
            except ValueError:
                self.close()
                return
            if isinstance(q, proto.RcptQuestion):
                transport.write(pack(self.lookup.rcpt(q.address)))
            else:
                transport.pause_reading()
                self.auth_task = self.loop.create_task(self.auth(q))

    async def auth(self, q: proto.AuthQuestion) -> None:
        try:
            async with asyncio.timeout(proto.AUTH_TIMEOUT_S):
                answer = await self.lookup.auth(q)
        except (OSError, TimeoutError, ValueError):
            self.close()  # no answer; smtpd then says 4xx
            return
        self.auth_task = None
        if self.transport is None:
            return
        self.transport.write(pack(answer))
        self.last = self.loop.time()
        self.transport.resume_reading()
        self.answer_pending()

    def idle_check(self) -> None:
        if self.transport is None:
            return
        quiet_until = self.last + proto.IDLE_TIMEOUT_S
        if self.auth_task is None and self.loop.time() >= quiet_until:
            self.close()
            return
        # one timer per quiet period, not one per question
        self.timer = self.loop.call_at(max(quiet_until, self.loop.time() + 1.0), self.idle_check)

    def eof_received(self) -> bool:
        return False  # smtpd hung up: so do we

    def connection_lost(self, exc: Exception | None) -> None:
        self.close()

    def close(self) -> None:
        transport, self.transport = self.transport, None
        self.lookup.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        if self.auth_task is not None and self.auth_task is not asyncio.current_task():
            self.auth_task.cancel()
        if transport is not None:
            transport.close()


async def serve(home: Home) -> None:
    lookup = Lookup(home)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lookup.reload)
    # 0666: qmaild is in no group of ours; who may talk is checked per connection
    sock = unix_listener(home.socket("lookup"), mode=0o666, backlog=256)
    server = await loop.create_unix_server(lambda: LookupConnection(lookup), sock=sock)
    log("status: lookup ready")
    await wait_for_stop()
    server.close()
    for conn in list(lookup.connections):
        conn.close()


def main(argv: list[str] | None = None) -> int:
    return component_main("lookup", serve, argv)


if __name__ == "__main__":
    raise SystemExit(main())
