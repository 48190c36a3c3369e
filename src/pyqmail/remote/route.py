"""Where mail for a domain goes: smtproutes, then MX, then A/AAAA (qmail-remote)."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from pyqmail.config import RemoteConfig
from pyqmail.formats.control import domain_keys

SMTP_PORT = 25


class RouteError(Exception):
    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(frozen=True, slots=True)
class Target:
    host: str  # name, for TLS and logs
    ip: str
    port: int


def smtproute(domain: str, cfg: RemoteConfig) -> tuple[str, int] | None:
    """(relay, port) from control/smtproutes; None means use MX as usual."""
    for key in [*domain_keys(domain), ""]:
        if key in cfg.smtproutes:
            value = cfg.smtproutes[key]
            if not value:
                return None
            relay, port = value, SMTP_PORT
            if value.startswith("["):
                end = value.find("]")
                relay, rest = value[1:end], value[end + 1 :]
                if rest.startswith(":") and rest[1:].isdigit():
                    port = int(rest[1:])
            elif ":" in value:
                host, _, p = value.rpartition(":")
                if p.isdigit():
                    relay, port = host, int(p)
            return relay, port
    return None


def make_resolver(cfg: RemoteConfig) -> dns.asyncresolver.Resolver:
    if not cfg.resolvers:
        return dns.asyncresolver.Resolver()
    res = dns.asyncresolver.Resolver(configure=False)
    servers = []
    for entry in cfg.resolvers:
        host, port = entry, 53
        if entry.count(":") == 1:
            host, _, p = entry.partition(":")
            port = int(p) if p.isdigit() else 53
        elif entry.startswith("["):
            host, _, p = entry[1:].partition("]:")
            port = int(p) if p.isdigit() else 53
        servers.append(host)
        res.port = port
    res.nameservers = servers
    res.lifetime = 10.0
    return res


def literal_ip(host: str) -> str | None:
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    text = text.removeprefix("IPv6:")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


async def _addresses(res: dns.asyncresolver.Resolver, name: str) -> list[str]:
    ips: list[str] = []
    temp = False
    for rtype in ("AAAA", "A"):
        try:
            answer = await res.resolve(name, rtype)
            ips.extend(r.to_text() for r in answer)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except (dns.exception.Timeout, dns.resolver.NoNameservers):
            temp = True
    if not ips and temp:
        raise RouteError("Z", "Sorry, I couldn't find any host by that name. (#4.1.2)")
    return ips


async def targets(domain: str, cfg: RemoteConfig, res: dns.asyncresolver.Resolver) -> list[Target]:
    """Every address to try, best first."""
    route = smtproute(domain, cfg)
    if route is not None:
        relay, port = route
        ip = literal_ip(relay)
        if ip:
            return [Target(relay, ip, port)]
        return [Target(relay, a, port) for a in await _addresses(res, relay)]
    ip = literal_ip(domain)
    if ip:
        return [Target(domain, ip, SMTP_PORT)]
    try:
        answer = await res.resolve(domain, "MX")
        mxs = [(r.preference, r.exchange.to_text().rstrip(".")) for r in answer]
    except dns.resolver.NXDOMAIN as exc:
        raise RouteError("D", f"Sorry, I couldn't find any host named {domain}. (#5.1.2)") from exc
    except dns.resolver.NoAnswer:
        mxs = []
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise RouteError("Z", "Sorry, I couldn't find any host by that name. (#4.1.2)") from exc
    if any(name in ("", ".") for _p, name in mxs) and len(mxs) == 1:
        # RFC 7505 null MX: the domain accepts no mail
        raise RouteError("D", f"Sorry, {domain} does not accept mail (null MX). (#5.1.10)")
    if not mxs:
        ips = await _addresses(res, domain)
        if not ips:
            raise RouteError("D", "Sorry, I couldn't find a mail exchanger or IP address. (#5.4.4)")
        return [Target(domain, a, SMTP_PORT) for a in ips]
    random.shuffle(mxs)  # equal preferences in random order; sort is stable
    mxs.sort(key=lambda m: m[0])
    out: list[Target] = []
    for _pref, name in mxs:
        out.extend(Target(name, a, SMTP_PORT) for a in await _addresses(res, name))
    return out
