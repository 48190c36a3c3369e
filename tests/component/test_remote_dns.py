"""Remote routing against a real DNS server (dnsmasq on loopback): MX order,
random order among equals, implicit MX, null MX, CNAME, failures (issue #6)."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from pyqmail.config import RemoteConfig
from pyqmail.formats.control import parse_networks
from pyqmail.formats.tlspolicy import parse_tlsdestinations
from pyqmail.remote.route import AMBIGUOUS_MX, LazyResolver, RouteError, Target, targets
from tests.component.test_remote_smtp import deliver
from tests.dnsmasq import DnsServer, Zone, running_dnsmasq
from tests.harness import running_sink

ZONE = Zone(
    mx=[
        ("order.test", "mx3.order.test", 30),
        ("order.test", "mx1.order.test", 10),
        ("order.test", "mx2.order.test", 20),
        *[("equal.test", f"{n}.equal.test", 10) for n in "abc"],
        ("equal.test", "d.equal.test", 20),
        ("cnamemx.test", "mxalias.test", 5),
        ("noaddr.test", "missing.test", 10),
        ("self.test", "mx.self.test", 10),
        ("self.test", "backup.self.test", 20),
        ("selfonly.test", "mx.self.test", 10),
        ("failover.test", "down.failover.test", 10),
        ("failover.test", "up.failover.test", 20),
        ("tls.test", "mx.tls.test", 10),
        ("busy.test", "down.failover.test", 10),
        ("busy.test", "up.failover.test", 20),
    ],
    hosts={
        "mx1.order.test": ["127.0.0.11"],
        "mx2.order.test": ["127.0.0.12", "::1"],
        "mx3.order.test": ["127.0.0.13"],
        **{f"{n}.equal.test": [f"127.0.1.{i}"] for i, n in enumerate("abcd", 1)},
        "implicit.test": ["127.0.0.21", "::1"],
        "mx.self.test": ["127.0.0.1"],
        "backup.self.test": ["192.0.2.7"],
        "down.failover.test": ["127.0.0.3"],
        "up.failover.test": ["127.0.0.1"],
        "mx.tls.test": ["127.0.0.1"],
    },
    cnames={"alias.test": "order.test", "mxalias.test": "mx1.order.test"},
    null_mx=["nullmx.test"],
)


@pytest.fixture(scope="module")
def dnsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsServer]:
    with running_dnsmasq(tmp_path_factory.mktemp("dns"), ZONE) as server:
        yield server


def cfg_for(server: DnsServer | None, **changes: object) -> RemoteConfig:
    resolvers = (f"127.0.0.1:{server.port}",) if server else ("127.0.0.1:9",)
    base = RemoteConfig("me.example", {}, 5, 5, resolvers, me="me.example", smtpport=2525)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def resolve(cfg: RemoteConfig, domain: str, is_me: object = None) -> list[Target]:
    async def go() -> list[Target]:
        res = LazyResolver(cfg)
        if is_me is None:
            return await targets(domain, cfg, res)
        return await targets(domain, cfg, res, is_me)  # type: ignore[arg-type]

    return asyncio.run(go())


def failure(cfg: RemoteConfig, domain: str, is_me: object = None) -> RouteError:
    with pytest.raises(RouteError) as err:
        resolve(cfg, domain, is_me)
    return err.value


def test_mx_in_preference_order_ipv6_first(dnsd: DnsServer) -> None:
    got = resolve(cfg_for(dnsd), "order.test")
    assert [(t.host, t.ip, t.pref) for t in got] == [
        ("mx1.order.test", "127.0.0.11", 10),
        ("mx2.order.test", "::1", 20),  # RFC 6724: IPv6 before IPv4 for the same host
        ("mx2.order.test", "127.0.0.12", 20),
        ("mx3.order.test", "127.0.0.13", 30),
    ]
    assert {t.port for t in got} == {2525}  # control/smtpport, not 25


def test_equal_preferences_in_random_order(dnsd: DnsServer) -> None:
    """RFC 5321 §5.1: MX hosts of equal preference are tried in random order."""
    cfg = cfg_for(dnsd)
    firsts = set()
    for _ in range(40):
        got = resolve(cfg, "equal.test")
        assert sorted(t.host for t in got[:3]) == ["a.equal.test", "b.equal.test", "c.equal.test"]
        assert got[3].host == "d.equal.test"
        firsts.add(got[0].host)
    assert len(firsts) > 1  # 40 draws all alike: chance 3 * 3**-40


def test_no_mx_means_the_domains_own_addresses(dnsd: DnsServer) -> None:
    got = resolve(cfg_for(dnsd), "implicit.test")
    assert [(t.host, t.ip) for t in got] == [
        ("implicit.test", "::1"),
        ("implicit.test", "127.0.0.21"),
    ]


def test_null_mx_is_permanent(dnsd: DnsServer) -> None:
    err = failure(cfg_for(dnsd), "nullmx.test")
    assert err.status == "D"
    assert "does not accept mail (null MX). (#5.1.10)" in err.text


def test_cname_is_followed(dnsd: DnsServer) -> None:
    assert resolve(cfg_for(dnsd), "alias.test")[0].host == "mx1.order.test"
    # an MX naming an alias (RFC 2181 §10.3 says it should not, people do)
    got = resolve(cfg_for(dnsd), "cnamemx.test")
    assert [(t.host, t.ip) for t in got] == [("mxalias.test", "127.0.0.11")]


def test_unknown_domain_is_permanent(dnsd: DnsServer) -> None:
    err = failure(cfg_for(dnsd), "nothere.test")
    assert (err.status, err.text) == (
        "D",
        "Sorry, I couldn't find any host named nothere.test. (#5.1.2)",
    )


def test_mx_without_address_is_permanent(dnsd: DnsServer) -> None:
    err = failure(cfg_for(dnsd), "noaddr.test")
    assert err.status == "D"
    assert "(#5.4.4)" in err.text


def test_refused_query_defers(dnsd: DnsServer) -> None:
    err = failure(cfg_for(dnsd), "elsewhere.example")  # outside the served zone: REFUSED
    assert (err.status, err.text) == ("Z", "Sorry, I couldn't find any host by that name. (#4.1.2)")


def test_dead_dns_server_defers() -> None:
    err = failure(cfg_for(None, timeoutdns=1), "order.test")
    assert err.status == "Z"
    assert "(#4.1.2)" in err.text


def test_mx_pointing_at_myself_is_dropped_with_worse_ones(dnsd: DnsServer) -> None:
    """qmail: exchangers no better than our own best preference are skipped."""

    def is_me(ip: str) -> bool:
        return ip == "127.0.0.1"

    err = failure(cfg_for(dnsd), "selfonly.test", is_me)
    assert (err.status, err.text) == ("D", AMBIGUOUS_MX)
    # we are the best MX (10): the backup (20) is worse, so nothing is left either
    assert failure(cfg_for(dnsd), "self.test", is_me).text == AMBIGUOUS_MX
    # a better MX than us stays
    got = resolve(cfg_for(dnsd), "order.test", lambda ip: ip == "127.0.0.12")
    assert [t.host for t in got] == ["mx1.order.test"]


def test_smtproutes_beats_mx_and_takes_a_port(dnsd: DnsServer) -> None:
    cfg = cfg_for(dnsd, smtproutes={"order.test": "implicit.test:2600", ".test": "[127.0.0.5]"})
    assert [(t.ip, t.port) for t in resolve(cfg, "order.test")] == [
        ("::1", 2600),
        ("127.0.0.21", 2600),
    ]
    assert [(t.ip, t.port, t.pref) for t in resolve(cfg, "x.y.test")] == [("127.0.0.5", 25, None)]
    # an empty relay means "use MX as usual"
    cfg = cfg_for(dnsd, smtproutes={"order.test": "", "": "127.0.0.9"})
    assert resolve(cfg, "order.test")[0].host == "mx1.order.test"
    assert resolve(cfg, "other.example")[0].ip == "127.0.0.9"


def test_failover_to_the_next_mx_and_reuse_there(dnsd: DnsServer, tmp_path: Path) -> None:
    """The best MX refuses connections: the second takes the mail, and its open
    connection carries the next messages without going back to the first."""
    with running_sink() as sink:
        cfg = cfg_for(dnsd, smtpport=sink.port, notipme=parse_networks("127.0.0.0/8", path="x"))
        jobs = [
            (b"a@example.org", (b"u%d@failover.test" % i,), b"Subject: x\n\nbody\n")
            for i in range(5)
        ]
        run = deliver(tmp_path, cfg, jobs)
    assert [r[0][:1] for r in run.reports] == [b"K"] * 5
    assert sink.connections == 1
    assert run.reused == 4
    assert len(sink.messages) == 5


@pytest.mark.parametrize(("cert_name", "ok"), [("mx.tls.test", True), ("other.test", False)])
def test_verify_checks_the_mx_name(
    dnsd: DnsServer, tmp_path: Path, cert_name: str, ok: bool
) -> None:
    ca = trustme.CA()
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(cert_name).configure_cert(ctx)
    with running_sink(tls_context=ctx) as sink:
        cfg = cfg_for(
            dnsd,
            smtpport=sink.port,
            notipme=parse_networks("127.0.0.0/8", path="x"),
            tlsdestinations=parse_tlsdestinations(f"tls.test:verify:{cafile}", path="x"),
        )
        run = deliver(tmp_path, cfg, [(b"a@example.org", (b"u@tls.test",), b"Subject: x\n\nb\n")])
    if ok:
        assert run.reports[0][0].startswith(b"K")
        assert [m.tls for m in sink.messages] == [True]
    else:
        assert run.reports[0][0].startswith(b"ZConnected to 127.0.0.1 but the TLS handshake failed")
        assert b"mx.tls.test" in run.reports[0][0]  # the name it wanted
        assert sink.messages == []


def test_greeting_refused_tries_the_next_mx(dnsd: DnsServer, tmp_path: Path) -> None:
    """RFC 5321 §3.1 and §5.1: a 4xx/5xx greeting sends the client to the next MX."""
    busy_greeting = b"421 busy, try another\r\n"
    with (
        running_sink(host="127.0.0.3", greeting=busy_greeting) as busy,
        running_sink(port=busy.port) as sink,  # the same port on the second MX's address
    ):
        cfg = cfg_for(dnsd, smtpport=sink.port, notipme=parse_networks("127.0.0.0/8", path="x"))
        run = deliver(tmp_path, cfg, [(b"a@example.org", (b"u@busy.test",), b"S: x\n\nb\n")])
    assert run.reports[0][0].startswith(b"K")
    assert busy.connections == 1
    assert len(sink.messages) == 1
