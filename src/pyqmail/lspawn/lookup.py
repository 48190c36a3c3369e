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
Trusts:  only root, itself and qmaild (checked per connection with
         SO_PEERCRED): a password oracle is for smtpd alone. One bounded
         netstring per connection, parsed strictly; a malformed one closes it.

Answers follow the mail's later fate exactly: the address is rewritten by
the same routing.classify send uses, and judged by local.users.no_mailbox,
which uses the same resolve() and .qmail search lspawn uses.
"""

from __future__ import annotations

import asyncio
import os
import signal

from pyqmail.auth.runner import Verdict, check_password
from pyqmail.config import Home, SendConfig, SmtpdConfig
from pyqmail.formats import netstring
from pyqmail.formats.address import split_at_last_at
from pyqmail.ipc import lookup as proto
from pyqmail.ipc.frames import pack, read_frame
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

    async def connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            if sock is None or not peer_allowed(sock, self.allowed):
                return
            async with asyncio.timeout(proto.AUTH_TIMEOUT_S):
                payload = await read_frame(reader, proto.MAX_REQUEST_BYTES)
                if payload is None:
                    return
                q = proto.decode_request(payload)
                if isinstance(q, proto.RcptQuestion):
                    answer = self.rcpt(q.address)
                else:
                    answer = await self.auth(q)
                writer.write(pack(answer))
                await writer.drain()
        except (
            OSError,
            TimeoutError,
            ValueError,
            asyncio.IncompleteReadError,
            netstring.NetstringError,
        ):
            pass  # a broken request gets no answer; smtpd then says 4xx
        finally:
            writer.close()


async def serve(home: Home) -> None:
    lookup = Lookup(home)
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, lookup.reload)
    # 0666: qmaild is in no group of ours; who may talk is checked per connection
    sock = unix_listener(home.socket("lookup"), mode=0o666, backlog=256)
    server = await asyncio.start_unix_server(lookup.connection, sock=sock)
    log("status: lookup ready")
    await wait_for_stop()
    server.close()


def main(argv: list[str] | None = None) -> int:
    return component_main("lookup", serve, argv)


if __name__ == "__main__":
    raise SystemExit(main())
