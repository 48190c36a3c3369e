"""QMTP for remote delivery, and the choice between QMTP and SMTP.

Runs as: qmailr (the invoking user in embedded mode), inside rspawn.
Reads:   the queued message; control/qmtproutes (``domain:relay[:port]``,
         port 209 by default) and what remote/smtp.py reads.
Trusts:  nothing from the server: each response is a netstring bounded by
         proto/qmtp before it is read, and its text is cut for the logs.
Standards: cr.yp.to/proto/qmtp.txt; MXPS (cr.yp.to/proto/mxps.txt).

QMTP is used for a domain listed in control/qmtproutes, or, without an
smtproutes entry, for the MX records whose preference is in MXPS's QMTP
slice (12801, 12817, ... 13041: value mod 16 == 1, qmail-protocols §7.5).
When no QMTP connection can be made the delivery falls back to SMTP
(remote/smtp.py) as usual; a failure over an established QMTP connection
is the delivery's result, as MXPS says.
"""

from __future__ import annotations

import asyncio
import contextlib

from pyqmail.config import QmtpConfig, RemoteConfig
from pyqmail.formats.control import domain_keys
from pyqmail.formats.netstring import NetstringError
from pyqmail.proto.qmtp.client import ResponseReader, qmtp_package
from pyqmail.remote.deliver import Remote, RemoteJob
from pyqmail.remote.route import (
    LazyResolver,
    RouteError,
    Target,
    addresses,
    literal_ip,
    route_relay,
    smtproute,
)

QMTP_PORT = 209
SERVER_TEXT_LIMIT = 5000
MXPS_FIRST, MXPS_LAST = 12800, 13055


def is_qmtp_preference(pref: int) -> bool:
    """MXPS: 12800-13055 in 16 slices by value mod 16; slice 1 is QMTP."""
    return MXPS_FIRST <= pref <= MXPS_LAST and pref % 16 == 1


def qmtproute(domain: str, cfg: QmtpConfig) -> tuple[str, int] | None:
    """(relay, port) from control/qmtproutes, keys tried as smtproutes' are."""
    for key in [*domain_keys(domain.lower()), ""]:
        value = cfg.qmtproutes.get(key)
        if value is None:
            continue
        if not value:
            return None  # an empty relay: no QMTP route for this domain
        return route_relay(value, QMTP_PORT)
    return None


async def qmtp_targets(
    domain: str, rcfg: RemoteConfig, qcfg: QmtpConfig, res: LazyResolver
) -> list[Target]:
    """Where to try QMTP first, best first; [] means SMTP only."""
    route = qmtproute(domain, qcfg)
    if route is not None:
        relay, port = route
        ip = literal_ip(relay)
        if ip:
            return [Target(relay, ip, port)]
        return [Target(relay, a, port) for a in await addresses(res, relay)]
    if smtproute(domain, rcfg) is not None or literal_ip(domain):
        return []  # an artificial SMTP route or an address literal: no MX to read
    import dns.exception  # only here, past the routes: see LazyResolver

    try:
        answer = await res.resolve(domain, "MX")
    except dns.exception.DNSException:
        return []  # the SMTP path looks again and reports the problem in qmail's words
    mxs = sorted(
        (r.preference, r.exchange.to_text().rstrip("."))
        for r in answer
        if is_qmtp_preference(r.preference)
    )
    out: list[Target] = []
    for _pref, name in mxs:
        out.extend(Target(name, a, QMTP_PORT) for a in await addresses(res, name))
    return out


def _said(text: bytes) -> bytes:
    text = text[:SERVER_TEXT_LIMIT].replace(b"\r", b"").replace(b"\0", b"?")
    return b"Remote host said: " + text + b"\n"


def report(ip: bytes, status: str, text: bytes) -> bytes:
    """A response as qmail-remote would word it (qmail-protocols §2.2)."""
    if status == "K":
        return b"K" + ip + b" accepted message.\n" + _said(text)
    return (
        status.encode()
        + ip
        + b" does not like recipient.\n"
        + _said(text)
        + (b"Giving up on " + ip + b".\n" if status == "D" else b"")
    )


async def _session(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    target: Target,
    package: bytes,
    count: int,
    timeout: float,
) -> list[bytes]:
    ip = target.ip.encode()
    reports: list[bytes] = []
    sent = False
    try:
        writer.write(package)
        async with asyncio.timeout(timeout):
            await writer.drain()
        sent = True
        responses = ResponseReader()
        while len(reports) < count:
            got = responses.next_response()
            if got is not None:
                reports.append(report(ip, got.status, got.text))
                continue
            async with asyncio.timeout(timeout):
                data = await reader.read(65536)
            if not data:
                break
            responses.receive_data(data)
    except (TimeoutError, OSError, NetstringError):
        pass
    # a missing response means temporary failure (qmail-protocols §7.2)
    died = b"ZConnected to " + ip + b" but connection died."
    if sent:
        died += b" Possible duplicate!"
    return reports + [died + b" (#4.4.2)\n"] * (count - len(reports))


async def deliver_qmtp(
    job: RemoteJob, targets: list[Target], cfg: RemoteConfig
) -> list[bytes] | None:
    """Per-recipient reports; None when no QMTP connection could be made."""
    n = len(job.recipients)
    try:
        with open(job.message_path, "rb") as fh:
            message = fh.read()
    except OSError:
        return [b"ZUnable to read message. (#4.3.0)"] * n
    package = qmtp_package(message, job.sender, job.recipients)
    for target in targets:
        try:
            async with asyncio.timeout(cfg.timeoutconnect):
                reader, writer = await asyncio.open_connection(target.ip, target.port)
        except (OSError, TimeoutError):
            continue
        try:
            return await _session(reader, writer, target, package, n, cfg.timeoutremote)
        finally:
            with contextlib.suppress(OSError):
                writer.close()
    return None


async def deliver(job: RemoteJob, remote: Remote, qcfg: QmtpConfig) -> list[bytes]:
    """QMTP where qmtproutes or MXPS say so and a connection is made, else SMTP
    (remote/deliver.py, with its connection pool and TLS)."""
    try:
        targets = await qmtp_targets(job.domain, remote.cfg, qcfg, remote.resolver)
    except RouteError:
        targets = []
    if targets:
        got = await deliver_qmtp(job, targets, remote.cfg)
        if got is not None:
            return got
    return await remote.deliver(job)
