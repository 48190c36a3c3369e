"""When remote delivery speaks QMTP: control/qmtproutes and MXPS (qmail-protocols §7.5),
against a DNS server this test runs on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from pyqmail.config import QmtpConfig, RemoteConfig
from pyqmail.remote.qmtp import QMTP_PORT, is_qmtp_preference, qmtp_targets, qmtproute
from pyqmail.remote.route import LazyResolver, Target

ZONE = {
    ("b.example", "MX"): ["12801 mx1.b.example.", "10 mx2.b.example.", "12800 mx3.b.example."],
    ("c.example", "MX"): ["10 mx2.b.example."],
    ("mx1.b.example", "A"): ["127.0.0.1"],
    ("mx2.b.example", "A"): ["127.0.0.2"],
    ("mx3.b.example", "A"): ["127.0.0.3"],
    ("relay.example", "A"): ["127.0.0.9"],
}


@contextlib.contextmanager
def dns_server() -> Iterator[int]:
    """A tiny authoritative UDP server answering from ZONE; yields its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        names = {n for n, _t in ZONE}
        while not stop.is_set():
            try:
                wire, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(wire)
            resp = dns.message.make_response(query)
            resp.flags |= dns.flags.AA
            for q in query.question:
                name = q.name.to_text().rstrip(".").lower()
                rtype = dns.rdatatype.to_text(q.rdtype)
                if name not in names:
                    resp.set_rcode(dns.rcode.NXDOMAIN)
                elif (name, rtype) in ZONE:
                    resp.answer.append(
                        dns.rrset.from_text(q.name, 60, "IN", rtype, *ZONE[(name, rtype)])
                    )
            sock.sendto(resp.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        sock.close()


def remote_cfg(port: int, smtproutes: dict[str, str] | None = None) -> RemoteConfig:
    return RemoteConfig("me.example", smtproutes or {}, 5, 5, (f"127.0.0.1:{port}",))


def targets(domain: str, rcfg: RemoteConfig, routes: dict[str, str] | None = None) -> list[Target]:
    return asyncio.run(qmtp_targets(domain, rcfg, QmtpConfig(routes or {}), LazyResolver(rcfg)))


@pytest.mark.parametrize(
    ("pref", "qmtp"),
    [
        (12801, True),
        (12817, True),
        (13041, True),
        (12800, False),
        (12802, False),
        (13057, False),
        (1, False),
        (10, False),
    ],
)
def test_mxps_qmtp_slice(pref: int, qmtp: bool) -> None:
    """12800-13055 split by value mod 16; slice 1 is QMTP, everything else is not."""
    assert is_qmtp_preference(pref) is qmtp


def test_qmtproutes_lookup_order_and_ports() -> None:
    cfg = QmtpConfig({"b.example": "relay.example", ".c.example": "[127.0.0.5]:2209", "": "x:7"})
    assert qmtproute("b.example", cfg) == ("relay.example", QMTP_PORT)
    assert qmtproute("mx.c.example", cfg) == ("127.0.0.5", 2209)
    assert qmtproute("other.example", cfg) == ("x", 7)  # the default route
    assert qmtproute("B.Example", cfg) == ("relay.example", QMTP_PORT)
    assert qmtproute("b.example", QmtpConfig({"b.example": ""})) is None


def test_mx_in_the_qmtp_slice_is_tried_with_qmtp_first() -> None:
    with dns_server() as port:
        got = targets("b.example", remote_cfg(port))
    assert got == [Target("mx1.b.example", "127.0.0.1", QMTP_PORT)]


def test_ordinary_mx_means_smtp_only() -> None:
    with dns_server() as port:
        assert targets("c.example", remote_cfg(port)) == []


def test_unknown_domain_leaves_the_report_to_smtp() -> None:
    with dns_server() as port:
        assert targets("nowhere.example", remote_cfg(port)) == []


def test_an_smtproute_wins_over_mxps() -> None:
    with dns_server() as port:
        assert targets("b.example", remote_cfg(port, {"b.example": "127.0.0.1:25"})) == []


def test_a_qmtproute_names_a_host_looked_up_in_dns() -> None:
    with dns_server() as port:
        got = targets("d.example", remote_cfg(port), {"d.example": "relay.example:2209"})
    assert got == [Target("relay.example", "127.0.0.9", 2209)]
