"""The two halves of a POP3 session around the sans-IO engine.

authorize() is qmail-popup's part: greeting, CAPA, STLS, USER/PASS/APOP,
ending with a Login (or None when the client left). transact() is
qmail-pop3d's part over an opened Mailbox. Both only move bytes between a
Channel and the engine and make the decisions the engine leaves open.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import time
from dataclasses import dataclass

from pyqmail.pop3d.channel import Channel
from pyqmail.pop3d.mailbox import Mailbox
from pyqmail.proto.pop3 import server as eng
from pyqmail.proto.pop3.stuff import Stuffer
from pyqmail.unix.logfmt import log

FILE_CHUNK_BYTES = 65536
FAILED_LOGIN_DELAY_S = 2.0  # before "-ERR authorization failed": slows guessing


def is_loopback(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def greeting_timestamp(hostname: str, pid: int | None = None, now: float | None = None) -> bytes:
    """qmail-popup's ``<PID.TIME@HOSTNAME>``, also the APOP challenge."""
    pid = os.getpid() if pid is None else pid
    now = time.time() if now is None else now
    return f"<{pid}.{int(now)}@{hostname}>".encode("ascii", "replace")


@dataclass(frozen=True, slots=True)
class Login:
    user: bytes
    password: bytes  # the APOP digest for APOP
    timestamp: bytes
    apop: bool


def checkpassword_input(login: Login) -> bytes:
    """What goes to checkpassword on fd 3: ``user\\0password\\0timestamp\\0``."""
    return login.user + b"\0" + login.password + b"\0" + login.timestamp + b"\0"


@dataclass(slots=True)
class PopupPolicy:
    timestamp: bytes
    tls: ssl.SSLContext | None
    remote: str  # client IP, for the log and the loopback exception

    def plaintext_ok(self, chan: Channel) -> bool:
        # beyond qmail: a password crosses the network only inside TLS
        return chan.tls or is_loopback(self.remote)

    def capabilities(self, chan: Channel) -> list[bytes]:
        caps = [b"TOP", b"UIDL", b"PIPELINING"]
        if self.plaintext_ok(chan):
            caps.append(b"USER")
        if self.tls is not None and not chan.tls:
            caps.append(b"STLS")
        caps.append(b"IMPLEMENTATION pyqmail")
        return caps


def next_event(chan: Channel, engine: eng.POP3Server) -> eng.Event:
    while True:
        event = engine.next_event()
        if not isinstance(event, eng._NeedData):
            return event
        engine.receive_data(chan.read())


def authorize(chan: Channel, engine: eng.POP3Server, policy: PopupPolicy) -> Login | None:
    """Run the AUTHORIZATION state; the Login to check, or None (QUIT, EOF, error)."""
    chan.write(b"+OK " + policy.timestamp + b"\r\n")
    while True:
        event = next_event(chan, engine)
        if isinstance(event, eng.ConnectionClosed):
            return None
        if isinstance(event, eng.Rejected):
            chan.write(engine.rejected(event))
            if event.close:
                return None
        elif isinstance(event, eng.Quit):
            chan.write(engine.ok())
            return None
        elif isinstance(event, eng.Noop):
            chan.write(engine.ok())
        elif isinstance(event, eng.Capa):
            chan.write(engine.multiline(b"capability list follows", policy.capabilities(chan)))
        elif isinstance(event, eng.Stls):
            if policy.tls is None or chan.tls:
                chan.write(engine.err(b"STLS not available"))
                continue
            chan.write(engine.ok(b"begin TLS"))
            engine.start_tls()
            try:
                chan.start_tls(policy.tls)
            except (ssl.SSLError, ConnectionError) as exc:
                log(f"pop3: TLS handshake with {policy.remote} failed: {exc}")
                return None
        elif isinstance(event, eng.User):
            if policy.plaintext_ok(chan):
                chan.write(engine.ok())
            else:
                chan.write(engine.err(b"use STLS first: no passwords in the clear"))
        elif isinstance(event, eng.Pass):
            if not policy.plaintext_ok(chan):
                chan.write(engine.err(b"use STLS first: no passwords in the clear"))
                continue
            return Login(event.user, event.password, policy.timestamp, apop=False)
        elif isinstance(event, eng.Apop):
            return Login(event.user, event.digest, policy.timestamp, apop=True)
        else:
            chan.write(engine.err(b"authorization first"))


def login_failed(chan: Channel, engine: eng.POP3Server, login: Login, remote: str) -> None:
    """Log, wait, refuse: every failed login costs the guesser the same delay."""
    user = login.user.decode("utf-8", "replace")
    log(f"pop3: login failed for {user!r} from {remote}")
    time.sleep(FAILED_LOGIN_DELAY_S)
    chan.write(engine.err(b"authorization failed"))


def _send_message(
    chan: Channel, engine: eng.POP3Server, box: Mailbox, number: int, lines: int | None
) -> None:
    msg = box.get(number)
    if msg is None:
        chan.write(engine.err(b"no such message"))
        return
    try:
        fh = open(box.file(msg), "rb")  # noqa: SIM115 - closed below, after the +OK
    except OSError:
        chan.write(engine.err(b"unable to open that message"))
        return
    with fh:
        # one write per chunk, status line and final dot included: small
        # writes would each wait for the client's delayed ACK (Nagle)
        out = [engine.start_multiline()]
        stuffer = Stuffer(lines)
        while not stuffer.done:
            chunk = fh.read(FILE_CHUNK_BYTES)
            if not chunk:
                break
            out.append(stuffer.feed(chunk))
            if len(chunk) == FILE_CHUNK_BYTES:
                chan.write(b"".join(out))
                out = []
        out.append(stuffer.finish())
        chan.write(b"".join(out))
    box.opened(number)


def transact(chan: Channel, engine: eng.POP3Server, box: Mailbox) -> int:
    """Run the TRANSACTION state; 0 after QUIT (changes made), 1 otherwise (none)."""
    while True:
        event = next_event(chan, engine)
        if isinstance(event, eng.ConnectionClosed):
            return 1
        if isinstance(event, eng.Rejected):
            chan.write(engine.rejected(event))
            if event.close:
                return 1
        elif isinstance(event, eng.Quit):
            problems = box.commit()
            for p in problems:
                log(f"pop3: QUIT could not update {p}")
            if problems:
                chan.write(engine.err(b"some deleted messages not removed"))
            else:
                chan.write(engine.ok())
            return 0
        elif isinstance(event, eng.Noop):
            chan.write(engine.ok())
        elif isinstance(event, eng.Capa):
            chan.write(
                engine.multiline(
                    b"capability list follows",
                    [b"TOP", b"UIDL", b"PIPELINING", b"IMPLEMENTATION pyqmail"],
                )
            )
        elif isinstance(event, eng.Stat):
            count, size = box.stat()
            chan.write(engine.ok(b"%d %d" % (count, size)))
        elif isinstance(event, (eng.List, eng.Uidl)):
            _list(chan, engine, box, event)
        elif isinstance(event, eng.Retr):
            _send_message(chan, engine, box, event.msg, None)
        elif isinstance(event, eng.Top):
            _send_message(chan, engine, box, event.msg, event.lines)
        elif isinstance(event, eng.Dele):
            if box.delete(event.msg):
                chan.write(engine.ok())
            else:
                chan.write(engine.err(b"no such message"))
        elif isinstance(event, eng.Rset):
            box.reset()
            chan.write(engine.ok())
        elif isinstance(event, eng.Last):
            chan.write(engine.ok(b"%d" % box.last))
        else:
            chan.write(engine.err(b"unimplemented"))


def _list(chan: Channel, engine: eng.POP3Server, box: Mailbox, event: eng.List | eng.Uidl) -> None:
    def item(n: int) -> bytes:
        m = box.messages[n - 1]
        if isinstance(event, eng.List):
            return b"%d %d" % (n, m.size)
        return b"%d %s" % (n, m.uid.encode("utf-8", "surrogateescape"))

    if event.msg is None:
        chan.write(engine.multiline(b"", [item(n) for n, _ in box.live()]))
    elif box.get(event.msg) is None:
        chan.write(engine.err(b"no such message"))
    else:
        chan.write(engine.ok(item(event.msg)))
