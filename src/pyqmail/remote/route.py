"""Where mail for a domain goes: smtproutes, then MX, then A/AAAA (qmail-remote).

qmail-remote's rules, kept: an smtproutes match wins (its relay is looked up
by address, never by MX); equal MX preferences are tried in random order;
no MX means the domain's own addresses (implicit MX, RFC 5321 §5.1); MX
hosts at or worse than our own best preference are dropped, and if that
leaves nothing the mail "loops back to myself" (qmail's #5.4.6 text).
Beyond qmail: RFC 7505 null MX is a permanent failure, AAAA is looked up
beside A (IPv6 first, as RFC 6724 prefers), CNAMEs are followed by the
resolver but the recipient address is never rewritten (RFC 5321 §5.1).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from pyqmail.config import RemoteConfig, parse_server
from pyqmail.formats.control import domain_keys

if TYPE_CHECKING:
    import dns.asyncresolver
    import dns.resolver

SMTP_PORT = 25
DNS_PORT = 53
MAX_MX = 30  # more exchangers than anyone runs; a bound on work per message
MAX_ADDRESSES = 20

TEMP_DNS = "Sorry, I couldn't find any host by that name. (#4.1.2)"
AMBIGUOUS_MX = (
    "Sorry. Although I'm listed as a best-preference MX or A for that host,\n"
    "it isn't in my control/locals file, so I don't treat it as local. (#5.4.6)"
)


class RouteError(Exception):
    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(frozen=True, slots=True)
class Target:
    host: str  # the name connected to: for TLS verification and logs
    ip: str
    port: int
    pref: int | None = None  # MX preference; None for smtproutes and literals


def route_relay(value: str, default_port: int) -> tuple[str, int]:
    """A route's ``relay``, ``relay:port`` or ``[relay]:port`` (smtproutes, qmtproutes)."""
    relay, port = value, default_port
    if value.startswith("["):
        relay, _, rest = value[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif ":" in value:
        host, _, p = value.rpartition(":")
        if p.isdigit():
            relay, port = host, int(p)
    return relay, port


def smtproute(domain: str, cfg: RemoteConfig) -> tuple[str, int] | None:
    """(relay, port) from control/smtproutes; None means use MX as usual."""
    for key in [*domain_keys(domain), ""]:
        if key in cfg.smtproutes:
            value = cfg.smtproutes[key]
            if not value:
                return None
            return route_relay(value, SMTP_PORT)
    return None


def parse_resolver(entry: str) -> tuple[str, int]:
    """control/resolvers line: ``IP``, ``IP:PORT``, ``[IPv6]:PORT`` or a bare IPv6.

    A line that is none of these (pyqmail check names it) is passed on as it
    is, for dnspython to refuse.
    """
    return parse_server(entry, DNS_PORT) or (entry, DNS_PORT)


class LazyResolver:
    """The resolver, built at the first lookup: dnspython (~7 MB of imports)
    stays out of rspawn until a domain without a literal smtproute needs DNS.
    Building it inside the lookup also turns a missing resolv.conf into a
    temporary DNS failure for that message, like any other DNS trouble."""

    def __init__(self, cfg: RemoteConfig) -> None:
        self.cfg = cfg
        self._res: dns.asyncresolver.Resolver | None = None

    async def resolve(self, name: str, rtype: str) -> dns.resolver.Answer:
        if self._res is None:
            self._res = make_resolver(self.cfg)
        return await self._res.resolve(name, rtype)


def make_resolver(cfg: RemoteConfig) -> dns.asyncresolver.Resolver:
    """/etc/resolv.conf's servers, or control/resolvers' (each with its own port)."""
    import dns.asyncresolver
    import dns.nameserver

    if cfg.resolvers:
        res = dns.asyncresolver.Resolver(configure=False)
        res.nameservers = [dns.nameserver.Do53Nameserver(*parse_resolver(e)) for e in cfg.resolvers]
    else:
        res = dns.asyncresolver.Resolver()
    res.lifetime = float(cfg.timeoutdns)
    res.timeout = min(res.timeout, res.lifetime)
    return res


@lru_cache(maxsize=4096)
def literal_ip(host: str) -> str | None:
    """The address a host name that is an IP literal stands for, else None.

    Cached: it is asked for every delivery (the domain, or its smtproutes
    relay), and a name that is not an address costs ipaddress a ValueError.
    """
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    text = text.removeprefix("IPv6:")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


async def _lookup(res: LazyResolver, name: str, rtype: str) -> dns.resolver.Answer | None:
    """The answer, None when the name has no such records; RouteError otherwise."""
    import dns.exception
    import dns.name
    import dns.resolver

    try:
        return await res.resolve(name, rtype)
    except dns.resolver.NXDOMAIN as exc:
        raise RouteError("D", f"Sorry, I couldn't find any host named {name}. (#5.1.2)") from exc
    except dns.resolver.NoAnswer:
        return None
    except (dns.name.NameTooLong, dns.name.LabelTooLong, dns.name.EmptyLabel) as exc:
        raise RouteError("D", f"Sorry, I couldn't find any host named {name}. (#5.1.2)") from exc
    except dns.exception.DNSException as exc:  # timeout, SERVFAIL, REFUSED, no servers
        raise RouteError("Z", TEMP_DNS) from exc


async def addresses(res: LazyResolver, name: str) -> list[str]:
    """AAAA then A addresses of name; [] when it has none; RouteError on DNS trouble."""
    ips: list[str] = []
    for rtype in ("AAAA", "A"):
        answer = await _lookup(res, name, rtype)
        if answer is not None:
            ips.extend(r.to_text() for r in answer)
    return ips[:MAX_ADDRESSES]


async def targets(
    domain: str,
    cfg: RemoteConfig,
    res: LazyResolver,
    is_me: Callable[[str], bool] = lambda _ip: False,
) -> list[Target]:
    """Every address to try, best first. RouteError when there is none to try."""
    route = smtproute(domain, cfg)
    if route is not None:
        relay, port = route
        ip = literal_ip(relay)
        if ip:
            return [Target(relay, ip, port)]
        ips = await addresses(res, relay)
        if not ips:
            raise RouteError("Z", f"Sorry, I couldn't find any host named {relay}. (#4.1.2)")
        return [Target(relay, a, port) for a in ips]
    ip = literal_ip(domain)
    if ip:
        return _not_me([Target(domain, ip, cfg.smtpport, 0)], is_me)
    answer = await _lookup(res, domain, "MX")
    import dns.name  # _lookup imported it already: this is a dict lookup

    mxs = [] if answer is None else [(r.preference, r.exchange) for r in answer][:MAX_MX]
    if len(mxs) == 1 and mxs[0][1] == dns.name.root:
        # RFC 7505: a single MX of "." says the domain accepts no mail
        raise RouteError("D", f"Sorry, {domain} does not accept mail (null MX). (#5.1.10)")
    if not mxs:
        ips = await addresses(res, domain)
        if not ips:
            raise RouteError("D", "Sorry, I couldn't find a mail exchanger or IP address. (#5.4.4)")
        return _not_me([Target(domain, a, cfg.smtpport, 0) for a in ips], is_me)
    random.shuffle(mxs)  # equal preferences in random order; the sort is stable
    mxs.sort(key=lambda m: m[0])
    out: list[Target] = []
    trouble: RouteError | None = None
    for pref, exchange in mxs:
        if exchange == dns.name.root:
            continue
        name = exchange.to_text(omit_final_dot=True)
        try:
            ips = await addresses(res, name)
        except RouteError as exc:
            if exc.status == "Z" and trouble is None:
                trouble = exc  # defer unless another exchanger can be reached
            continue
        out.extend(Target(name, a, cfg.smtpport, pref) for a in ips)
    if not out:
        if trouble is not None:
            raise trouble
        raise RouteError("D", "Sorry, I couldn't find a mail exchanger or IP address. (#5.4.4)")
    return _not_me(out, is_me)


def _not_me(found: list[Target], is_me: Callable[[str], bool]) -> list[Target]:
    """qmail's rule: drop exchangers no better than our own best preference."""
    mine = [t.pref for t in found if t.pref is not None and is_me(t.ip)]
    if not mine:
        return found
    best_me = min(mine)
    kept = [t for t in found if t.pref is not None and t.pref < best_me]
    if not kept:
        raise RouteError("D", AMBIGUOUS_MX)
    return kept
