"""Who is at the other end of a network connection, as qmail's servers see it.

One place for what qmail-smtpd, qmail-qmtpd and qmail-qmqpd share: the
client's tcprules/tcpserver environment (RELAYCLIENT, DATABYTES, QMAILQUEUE, TCP*) and
the Received line they write (qmail-protocols §9.5).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from pyqmail.formats import tcprules
from pyqmail.formats.address import split_at_last_at
from pyqmail.formats.control import domain_keys
from pyqmail.formats.dates import date822

RECEIVED_OK = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.@%+/=:-")
_UNSAFE = re.compile("[^" + re.escape(bytes(sorted(RECEIVED_OK)).decode()) + "]")


@dataclass(frozen=True, slots=True)
class Client:
    remote_ip: str
    remote_host: str | None = None
    remote_info: str | None = None
    local_ip: str | None = None
    local_host: str | None = None
    relayclient: str | None = None  # None: unset; "" or text: set (qmail semantics)
    databytes: int | None = None  # $DATABYTES overrides control/databytes
    qmailqueue: str | None = None  # $QMAILQUEUE: a qmail-queue program instead of the writer

    @property
    def loopback(self) -> bool:
        """A client on this host (127/8, ::1): nobody on the wire can listen in."""
        try:
            return ipaddress.ip_address(self.remote_ip).is_loopback
        except ValueError:
            return False


def client_for(
    ip: str,
    local_ip: str | None,
    rules: dict[str, tcprules.Rule],
    env: dict[str, str] | None = None,
) -> Client | None:
    """Apply tcprules; None means deny. env (tcpserver's) is the fallback source."""
    values = dict(env or {})
    rule = tcprules.match(rules, ip)
    if rule is not None:
        if not rule.allow:
            return None
        values.update(rule.env)
    databytes = values.get("DATABYTES")
    return Client(
        remote_ip=ip,
        remote_host=values.get("TCPREMOTEHOST"),
        remote_info=values.get("TCPREMOTEINFO"),
        local_ip=local_ip,
        local_host=values.get("TCPLOCALHOST"),
        relayclient=values.get("RELAYCLIENT"),
        databytes=int(databytes) if databytes and databytes.isdigit() else None,
        qmailqueue=values.get("QMAILQUEUE") or None,
    )


def safe(text: str) -> str:
    """Received-line fields: anything outside qmail's safe set becomes '?'."""
    return _UNSAFE.sub("?", text)


def received_line(client: Client, helo: bytes | None, now: float, protocol: str = "SMTP") -> bytes:
    """``Received: from HOST (HELO x) (INFO@IP)\\n  by LOCAL with PROTO; DATE``.

    QMTP and QMQP never have a HELO part (qmail-protocols §9.5).
    """
    host = client.remote_host or "unknown"
    line = f"Received: from {safe(host)}"
    if helo is not None:
        h = helo.decode("utf-8", "replace")
        if h.lower() != host.lower():
            line += f" (HELO {safe(h)})"
    info = f"{safe(client.remote_info)}@" if client.remote_info else ""
    local = client.local_host or client.local_ip or "unknown"
    line += f" ({info}{safe(client.remote_ip)})\n  by {safe(local)} with {protocol}; "
    return (line + f"{date822(now)}\n").encode()


def relay_allowed(client: Client, rcpthosts: frozenset[str] | None, rcpt: bytes) -> bool:
    """RELAYCLIENT set, no rcpthosts file, or the domain is listed (qmail-files §2.2)."""
    if client.relayclient is not None or rcpthosts is None:
        return True
    _, dom = split_at_last_at(rcpt)
    if dom is None:
        return True  # qmail-send adds envnoathost
    domain = dom.decode("utf-8", "surrogateescape").lower()
    return any(k in rcpthosts for k in domain_keys(domain))
