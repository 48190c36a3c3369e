"""Remote delivery through the whole MTA: bulk mail over reused connections,
MX from a real DNS server (IPv6), null MX and MX-loop bounces, verified
STARTTLS, the tcpto tools (issue #6)."""

from __future__ import annotations

import smtplib
import ssl
import threading
import time
from pathlib import Path

import trustme

from pyqmail.remote.tcpto import TcpTo
from tests.dnsmasq import Zone, running_dnsmasq
from tests.harness import (
    mta_with_sink,
    run_tool,
    running_mta,
    running_sink,
    wait_until,
    write_control,
)

BODY = b"Subject: remote e2e\r\n\r\nhello\r\n"


def test_bulk_mail_reuses_connections_and_batches_recipients(home: Path) -> None:
    """1,000 messages, two recipients each, to one domain: few connections, one
    transaction per message carrying both recipients (qmail: 2,000 connections)."""
    total, clients = 1000, 8
    # no connection may expire, however slowly a loaded machine injects: then at
    # most one is ever opened per concurrent delivery (concurrencyremote 20)
    write_control(home, "remoteidletime", "300\n")
    with mta_with_sink(home) as (mta, sink):

        def client(k: int) -> None:
            with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=60) as c:
                for n in range(k, total, clients):
                    c.sendmail(
                        "list@example.org",
                        [f"a{n}@example.net", f"b{n}@example.net"],
                        BODY.replace(b"hello", b"message %d" % n),
                    )

        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        wait_until(lambda: len(sink.messages) >= total, 240, "1000 messages at the sink")
        wait_until(mta.queue_empty, 60, "the queue to empty")
    assert len(sink.messages) == total
    assert all(len(m.rcpts) == 2 for m in sink.messages)
    got = sorted(a for m in sink.messages for a in m.rcpts)
    assert got == sorted(b"%s%d@example.net" % (p, n) for n in range(total) for p in (b"a", b"b"))
    # at most one connection per concurrent delivery (concurrencyremote 20)
    assert sink.connections <= 20
    assert "remote connection(s) opened" in mta.log()


ZONE = Zone(
    mx=[("v6.test", "mx.v6.test", 10)],
    hosts={"mx.v6.test": ["::1"]},
    null_mx=["nullmx.test"],
)


def test_mx_from_dns_over_ipv6_and_null_mx_bounce(home: Path, tmp_path: Path) -> None:
    with running_dnsmasq(tmp_path / "dns", ZONE) as dnsd, running_sink(host="::1") as sink:
        write_control(home, "resolvers", dnsd.resolvers_line)
        write_control(home, "smtpport", f"{sink.port}\n")
        write_control(home, "notipme", "::1\n")  # the loopback sink stands in for a remote MX
        with running_mta(home) as mta:
            with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=10) as c:
                c.sendmail("postmaster@localhost", ["u@v6.test", "v@nullmx.test"], BODY)
            wait_until(lambda: len(sink.messages) == 1, 30, "the message over IPv6")
            files = mta.wait_for_maildir("postmaster", timeout=30)
    assert sink.messages[0].rcpts == [b"u@v6.test"]
    assert sink.peers == ["::1"]
    bounce = files[0].read_bytes()
    assert (
        b"<v@nullmx.test>:\nSorry, nullmx.test does not accept mail (null MX). (#5.1.10)" in bounce
    )
    assert b"v6.test" not in bounce.split(b"--- Below this line")[0]


def test_mx_pointing_at_myself_bounces(home: Path, tmp_path: Path) -> None:
    """qmail's rule: an MX that is this host, with no better one, is a loop."""
    with running_dnsmasq(tmp_path / "dns", ZONE) as dnsd, running_sink(host="::1") as sink:
        write_control(home, "resolvers", dnsd.resolvers_line)
        write_control(home, "smtpport", f"{sink.port}\n")
        with running_mta(home) as mta:
            with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=10) as c:
                c.sendmail("postmaster@localhost", ["u@v6.test"], BODY)
            files = mta.wait_for_maildir("postmaster", timeout=30)
    assert sink.connections == 0
    assert (
        b"Although I'm listed as a best-preference MX or A for that host" in files[0].read_bytes()
    )


def test_verified_starttls_to_a_required_domain(home: Path, tmp_path: Path) -> None:
    ca = trustme.CA()
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    write_control(home, "tlsdestinations", f"example.net:verify:{cafile}\n:none\n")
    with running_sink(tls_context=ctx) as sink:
        write_control(home, "smtproutes", f"example.net:127.0.0.1:{sink.port}\n")
        with running_mta(home) as mta:
            with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=10) as c:
                c.sendmail("a@example.org", ["x@example.net"], BODY)
            wait_until(lambda: len(sink.messages) == 1, 30, "the message")
    assert sink.messages[0].tls


def test_qmail_tcpto_and_qmail_tcpok(home: Path) -> None:
    table = TcpTo(str(home / "queue" / "lock" / "tcpto"))
    now = time.time()
    table.record("192.0.2.1", timed_out=True, now=now - 400)
    table.record("192.0.2.1", timed_out=True, now=now - 100)
    table.record("2001:db8::1", timed_out=True, now=now - 10)
    shown = run_tool(home, "qmail-tcpto")
    assert shown.returncode == 0
    lines = shown.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("192.0.2.1 timed out 10")
    assert lines[0].endswith("seconds ago; # recent timeouts: 2")
    assert lines[1].startswith("2001:db8::1 timed out ")
    assert table.dead("192.0.2.1")
    assert run_tool(home, "qmail-tcpok").returncode == 0
    assert not table.dead("192.0.2.1")
    assert run_tool(home, "qmail-tcpto").stdout == ""


def test_remotebatch_limits_recipients_per_transaction(home: Path) -> None:
    write_control(home, "remotebatch", "3\n")
    rcpts = [f"r{n}@example.net" for n in range(7)]
    with mta_with_sink(home) as (mta, sink):
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=10) as c:
            c.sendmail("a@example.org", rcpts, BODY)
        wait_until(lambda: sum(len(m.rcpts) for m in sink.messages) == 7, 30, "7 recipients")
    assert sorted(len(m.rcpts) for m in sink.messages) == [1, 3, 3]


def test_check_reports_bad_remote_controls(home: Path) -> None:
    from tests.harness import pyqmail

    write_control(home, "tlsdestinations", "example.net:verify\nexample.org:maybe\n")
    write_control(home, "smtpport", "0\n")
    write_control(home, "outgoingip", "127.0.0.1\nnot-an-ip\n")
    res = pyqmail("check", "--home", str(home))
    assert res.returncode == 1
    assert f"{home}/control/smtpport:1: 0 is outside 1..65535" in res.stdout
    assert f"{home}/control/outgoingip:2: 'not-an-ip' is not an IP address" in res.stdout
    write_control(home, "outgoingip", "127.0.0.1\n")
    res = pyqmail("check", "--home", str(home))
    assert f"{home}/control/tlsdestinations:2: unknown level 'maybe'" in res.stdout
