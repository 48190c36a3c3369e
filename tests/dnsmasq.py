"""A real DNS server for tests: dnsmasq on a loopback port, serving only our records.

dnsmasq runs in the foreground (our child, stopped by its PID), reads no
configuration file, no /etc/hosts and no upstream servers, and answers
authoritatively for the test zones: a name it does not know there is
NXDOMAIN, a known name without the asked type has no answer, and any name
outside the zones is REFUSED (a temporary DNS failure to the client).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.nameserver
import dns.resolver
import pytest

DNSMASQ = "/usr/sbin/dnsmasq"


@dataclass
class Zone:
    """Records to serve. mx: (domain, exchange, preference); hosts: name -> IPs."""

    mx: list[tuple[str, str, int]] = field(default_factory=list)
    hosts: dict[str, list[str]] = field(default_factory=dict)
    cnames: dict[str, str] = field(default_factory=dict)
    null_mx: list[str] = field(default_factory=list)
    local: tuple[str, ...] = ("test",)

    def args(self) -> list[str]:
        out = [f"--local=/{d}/" for d in self.local]
        out += [f"--mx-host={d},{x},{p}" for d, x, p in self.mx]
        out += [f"--host-record={n},{','.join(ips)}" for n, ips in self.hosts.items()]
        out += [f"--cname={a},{t}" for a, t in self.cnames.items()]
        # RFC 7505 null MX: preference 0, exchange "." (the root: one zero byte)
        out += [f"--dns-rr={d},15,000000" for d in self.null_mx]
        return out


@dataclass
class DnsServer:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def resolvers_line(self) -> str:
        return f"127.0.0.1:{self.port}\n"


def _free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise AssertionError("no free port for dnsmasq")


def _answers(port: int) -> bool:
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", port)]
    res.lifetime = 1.0
    try:
        res.resolve("ready.test", "A")
    except dns.exception.DNSException:
        return False
    return True


@contextlib.contextmanager
def running_dnsmasq(tmp: Path, zone: Zone) -> Iterator[DnsServer]:
    if not os.path.exists(DNSMASQ) and shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq not installed (make test installs it when root)")
    binary = DNSMASQ if os.path.exists(DNSMASQ) else str(shutil.which("dnsmasq"))
    zone.hosts.setdefault("ready.test", ["127.0.0.1"])
    tmp.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):
        port = _free_port()
        log = tmp / f"dnsmasq-{port}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                [
                    binary,
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--no-poll",
                    f"--port={port}",
                    "--listen-address=127.0.0.1",
                    "--bind-interfaces",
                    f"--pid-file={tmp / f'dnsmasq-{port}.pid'}",
                    "--log-queries",
                    "--log-facility=-",
                    *zone.args(),
                ],
                stdout=fh,
                stderr=fh,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline and not _answers(port):
            time.sleep(0.05)
        if proc.poll() is None and _answers(port):
            break
        _stop(proc)  # lost a race for the port, or too slow: try another
    else:
        raise AssertionError(f"dnsmasq did not start:\n{log.read_text(errors='replace')}")
    try:
        yield DnsServer(port, proc, log)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
