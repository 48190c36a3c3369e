"""Is an address one of this host's own? (qmail's ipme, for the MX loop rule.)

qmail lists its interfaces; we ask the kernel the same question directly:
an address a socket can be bound to is local. That covers every interface
address, all of 127.0.0.0/8, and 0.0.0.0 / :: (which qmail also counts as
"me"). control/moreipme adds addresses (a NAT'ed public address that maps
to this host), control/notipme removes some, as the patches of those names
do. Answers are cached for a while: interfaces rarely change.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyqmail.formats.control import IPNetwork

CACHE_S = 300.0
CACHE_MAX = 4096


class IpMe:
    def __init__(self, more: tuple[IPNetwork, ...] = (), notme: tuple[IPNetwork, ...] = ()) -> None:
        self.more = more
        self.notme = notme
        self._cache: dict[str, tuple[float, bool]] = {}

    def __call__(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if any(addr in net for net in self.notme):
            return False
        if any(addr in net for net in self.more):
            return True
        now = time.monotonic()
        hit = self._cache.get(ip)
        if hit is not None and now - hit[0] < CACHE_S:
            return hit[1]
        mine = _bindable(addr)
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[ip] = (now, mine)
        return mine


def _bindable(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((str(addr), 0))
    except OSError:
        return False
    return True
