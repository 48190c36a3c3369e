"""The remote SMTP client against loopback sinks: per-recipient results,
batches, connection reuse, EHLO/HELO, SIZE, 8BITMIME, SMTPUTF8, STARTTLS and
its policy, outgoingip, loops, the tcpto table (issue #6)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trustme

from pyqmail.config import RemoteConfig
from pyqmail.formats.control import parse_networks
from pyqmail.formats.tlspolicy import parse_tlsdestinations
from pyqmail.remote.deliver import Remote, RemoteJob
from pyqmail.remote.pool import Pool
from pyqmail.remote.tcpto import TcpTo
from tests.harness import Sink, running_sink

BODY = b"Subject: remote\n\nline one\n.dot line\n"


def config(port: int, **changes: object) -> RemoteConfig:
    base = RemoteConfig(
        "me.example",
        {"example.net": f"127.0.0.1:{port}"},
        5,
        10,
        ("127.0.0.1:9",),
        me="me.example",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@dataclasses.dataclass
class Run:
    reports: list[list[bytes]]
    opened: int
    reused: int


def deliver(
    tmp: Path,
    cfg: RemoteConfig,
    jobs: Sequence[tuple[bytes, tuple[bytes, ...], bytes]],
    concurrency: int = 1,
    pause: float = 0.0,
) -> Run:
    """Run the jobs (sender, recipients, message) through one Remote."""
    paths = []
    for i, (_s, _r, message) in enumerate(jobs):
        p = tmp / f"msg{i}"
        p.write_bytes(message)
        paths.append(p)

    async def go() -> Run:
        remote = Remote(cfg, str(tmp / "tcpto"))
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> list[bytes]:
            sender, rcpts, _m = jobs[i]
            async with sem:
                if pause:
                    await asyncio.sleep(pause)
                job = RemoteJob(str(paths[i]), sender, rcpts, rcpts[0].rsplit(b"@")[1].decode())
                return await remote.deliver(job)

        reports = await asyncio.gather(*(one(i) for i in range(len(jobs))))
        await remote.pool.close_all()
        return Run(list(reports), remote.pool.opened, remote.pool.reused)

    return asyncio.run(go())


def one(
    tmp: Path, cfg: RemoteConfig, rcpts: tuple[bytes, ...], message: bytes = BODY
) -> list[bytes]:
    return deliver(tmp, cfg, [(b"a@example.org", rcpts, message)]).reports[0]


def test_per_recipient_results_in_one_transaction(tmp_path: Path) -> None:
    with running_sink() as sink:
        reports = one(
            tmp_path,
            config(sink.port),
            (
                b"ok1@example.net",
                b"defer-x@example.net",
                b"reject-y@example.net",
                b"ok2@example.net",
            ),
        )
    assert (
        reports[0]
        == reports[3]
        == b"K127.0.0.1 accepted message.\nRemote host said: 250 accepted\n"
    )
    assert reports[1] == (
        b"Z127.0.0.1 does not like recipient.\nRemote host said: 451 try later\n"
        b"Giving up on 127.0.0.1.\n"
    )
    assert reports[2].startswith(b"D127.0.0.1 does not like recipient.\nRemote host said: 550")
    (got,) = sink.messages
    assert got.rcpts == [b"ok1@example.net", b"ok2@example.net"]
    assert got.data == b"Subject: remote\r\n\r\nline one\r\n.dot line\r\n"
    assert got.params == b"SIZE=%d" % len(got.data.replace(b".dot", b"..dot"))


def test_all_recipients_refused_sends_no_message_and_the_connection_is_reused(
    tmp_path: Path,
) -> None:
    with running_sink() as sink:
        run = deliver(
            tmp_path,
            config(sink.port),
            [
                (b"a@example.org", (b"reject-1@example.net", b"defer-2@example.net"), BODY),
                (b"b@example.org", (b"ok@example.net",), BODY),
            ],
        )
    assert [r[:1] for r in run.reports[0]] == [b"D", b"Z"]
    assert run.reports[1][0].startswith(b"K")
    assert [m.mail_from for m in sink.messages] == [b"b@example.org"]
    assert sink.connections == 1  # the RSET before the second MAIL made the connection reusable


def test_too_many_recipients_continue_in_another_transaction(tmp_path: Path) -> None:
    """RFC 5321 §4.5.3.1.10: 452 for the rest; send them again after the first DATA."""
    rcpts = tuple(b"u%d@example.net" % i for i in range(7))
    with running_sink(max_rcpts=3) as sink:
        reports = one(tmp_path, config(sink.port), rcpts)
    assert all(r.startswith(b"K") for r in reports)
    assert [len(m.rcpts) for m in sink.messages] == [3, 3, 1]
    assert sorted(a for m in sink.messages for a in m.rcpts) == sorted(rcpts)
    assert sink.connections == 1


def test_connection_reuse_and_batches_for_bulk_mail(tmp_path: Path) -> None:
    """1,000 messages to one domain, 20 at a time: a handful of connections."""
    jobs = [
        (b"list@example.org", (b"a%d@example.net" % i, b"b%d@example.net" % i), BODY)
        for i in range(1000)
    ]
    with running_sink() as sink:
        run = deliver(tmp_path, config(sink.port, remoteidletime=300), jobs, concurrency=20)
    assert all(r.startswith(b"K") for rep in run.reports for r in rep)
    assert len(sink.messages) == 1000
    assert all(len(m.rcpts) == 2 for m in sink.messages)
    assert sink.connections == run.opened <= 20
    assert run.reused >= 980


def test_idle_limit_zero_turns_reuse_off(tmp_path: Path) -> None:
    jobs = [(b"a@example.org", (b"x@example.net",), BODY)] * 3
    with running_sink() as sink:
        deliver(tmp_path, config(sink.port, remoteidletime=0), jobs)
    assert sink.connections == 3


def test_idle_connection_is_closed_after_the_idle_limit(tmp_path: Path) -> None:
    with running_sink() as sink:
        cfg = config(sink.port, remoteidletime=2)
        run = deliver(tmp_path, cfg, [(b"a@example.org", (b"x@example.net",), BODY)] * 2, pause=0)
        assert sink.connections == 1
        assert run.reused == 1
        # a long pause between two messages: the first connection expired
        paths = [tmp_path / "m"]
        paths[0].write_bytes(BODY)

        async def two_apart() -> None:
            remote = Remote(cfg, str(tmp_path / "tcpto"))
            job = RemoteJob(str(paths[0]), b"a@example.org", (b"x@example.net",), "example.net")
            assert (await remote.deliver(job))[0][:1] == b"K"
            await asyncio.sleep(3.5)
            assert (await remote.deliver(job))[0][:1] == b"K"
            await remote.pool.close_all()

        asyncio.run(two_apart())
    assert sink.connections == 3


def test_connection_closed_by_the_server_while_idle_is_replaced(tmp_path: Path) -> None:
    with running_sink(drop_after=1) as sink:
        run = deliver(
            tmp_path, config(sink.port), [(b"a@example.org", (b"x@example.net",), BODY)] * 3
        )
    assert [r[0][:1] for r in run.reports] == [b"K", b"K", b"K"]
    assert len(sink.messages) == 3
    assert sink.connections == 3


def test_helo_when_ehlo_is_refused(tmp_path: Path) -> None:
    with running_sink(ehlo=False) as sink:
        reports = one(tmp_path, config(sink.port), (b"x@example.net",))
    assert reports[0].startswith(b"K")
    assert sink.helos == [b"EHLO me.example", b"HELO me.example"]
    assert sink.messages[0].params == b""  # no extensions after HELO


def test_size_limit_refuses_before_sending(tmp_path: Path) -> None:
    with running_sink(size_limit=100) as sink:
        reports = one(tmp_path, config(sink.port), (b"x@example.net",), b"x" * 200 + b"\n")
    assert reports[0].startswith(b"DConnected to 127.0.0.1 but the message is bigger")
    assert b"(#5.3.4)" in reports[0]
    assert sink.messages == []


def test_8bitmime_and_smtputf8(tmp_path: Path) -> None:
    utf8 = "j\u00f6rg@example.net".encode()
    with running_sink() as sink:  # no SMTPUTF8 offered
        reports = one(tmp_path, config(sink.port), (utf8,))
        assert reports[0].startswith(b"D")
        assert b"(#5.6.7)" in reports[0]
        one(tmp_path, config(sink.port), (b"x@example.net",), "Subject: \u00e9\n\nbody\n".encode())
        assert sink.messages[-1].params.endswith(b" BODY=8BITMIME")
    with running_sink(smtputf8=True) as sink:
        assert one(tmp_path, config(sink.port), (utf8,))[0].startswith(b"K")
        assert sink.messages[0].rcpts == [utf8]
        assert sink.messages[0].params.endswith(b" SMTPUTF8")


# -- TLS -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_sink(ca: trustme.CA) -> Iterator[Sink]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.example.net", "127.0.0.1").configure_cert(ctx)
    with running_sink(tls_context=ctx) as sink:
        yield sink


def policy(tmp: Path, text: str) -> RemoteConfig:
    return config(0, tlsdestinations=parse_tlsdestinations(text, path=str(tmp / "tlsdestinations")))


def test_starttls_when_offered(tmp_path: Path, tls_sink: Sink) -> None:
    cfg = config(tls_sink.port)
    run = deliver(tmp_path, cfg, [(b"a@example.org", (b"x@example.net",), BODY)] * 2)
    assert all(r[0].startswith(b"K") for r in run.reports)
    assert [m.tls for m in tls_sink.messages] == [True, True]
    assert tls_sink.connections == 1
    assert tls_sink.helos == [b"EHLO me.example", b"EHLO me.example"]  # again after TLS


def test_verify_policy_checks_the_certificate(
    tmp_path: Path, tls_sink: Sink, ca: trustme.CA
) -> None:
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    good = dataclasses.replace(
        policy(tmp_path, f"example.net:verify:{cafile}\n"),
        smtproutes={"example.net": f"127.0.0.1:{tls_sink.port}"},
    )
    assert one(tmp_path, good, (b"x@example.net",))[0].startswith(b"K")
    assert tls_sink.messages[-1].tls
    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    bad = dataclasses.replace(
        policy(tmp_path, f".net:verify:{other}\n"),
        smtproutes={"example.net": f"127.0.0.1:{tls_sink.port}"},
    )
    reports = one(tmp_path, bad, (b"x@example.net",))
    assert reports[0].startswith(b"ZConnected to 127.0.0.1 but the TLS handshake failed")
    assert len(tls_sink.messages) == 1  # nothing sent in clear instead


def test_required_tls_defers_when_not_offered(tmp_path: Path) -> None:
    with running_sink() as sink:
        cfg = dataclasses.replace(
            policy(tmp_path, "example.net:encrypt\n"),
            smtproutes={"example.net": f"127.0.0.1:{sink.port}"},
        )
        reports = one(tmp_path, cfg, (b"x@example.net",))
        assert reports[0] == (
            b"ZConnected to 127.0.0.1 but TLS is required and it does not offer STARTTLS."
            b" (#4.7.4)\n"
        )
        assert sink.messages == []
        # policy none: no STARTTLS even when offered is exercised below; may: plain is fine
        cfg = dataclasses.replace(cfg, tlsdestinations={})
        assert one(tmp_path, cfg, (b"x@example.net",))[0].startswith(b"K")


def test_policy_none_never_starts_tls(tmp_path: Path, tls_sink: Sink) -> None:
    cfg = dataclasses.replace(
        policy(tmp_path, ":none\n"), smtproutes={"": f"127.0.0.1:{tls_sink.port}"}
    )
    assert one(tmp_path, cfg, (b"x@example.net",))[0].startswith(b"K")
    assert tls_sink.messages[0].tls is False


# -- addresses, loops, dead hosts ---------------------------------------------------------


def test_outgoingip_binds_the_source_address(tmp_path: Path) -> None:
    with running_sink() as sink:
        cfg = config(sink.port, outgoingip=parse_networks("::1\n127.0.0.2\n", path="outgoingip"))
        assert one(tmp_path, cfg, (b"x@example.net",))[0].startswith(b"K")
    assert sink.peers == ["127.0.0.2"]


def test_remote_greeting_as_me_loops_back(tmp_path: Path) -> None:
    with running_sink(name="me.example") as sink:
        reports = one(tmp_path, config(sink.port), (b"x@example.net",))
    assert reports[0].startswith(b"DConnected to 127.0.0.1 but it greeted me as me.example")
    assert b"loops back to myself. (#5.4.6)" in reports[0]
    assert sink.messages == []


def test_tcpto_skips_a_host_that_keeps_timing_out(tmp_path: Path) -> None:
    with running_sink() as sink:
        cfg = config(sink.port)
        table = TcpTo(str(tmp_path / "tcpto"))
        now = time.time()
        table.record("127.0.0.1", timed_out=True, now=now - 300)
        table.record("127.0.0.1", timed_out=True, now=now - 60)
        assert [(e.ip, e.count) for e in table.entries()] == [("127.0.0.1", 2)]
        reports = one(tmp_path, cfg, (b"x@example.net",))
        assert reports[0] == b"ZSorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n"
        assert sink.connections == 0  # not even tried
        table.clear()  # what qmail-tcpok does
        assert one(tmp_path, cfg, (b"x@example.net",))[0].startswith(b"K")


def test_connect_timeout_is_recorded(tmp_path: Path) -> None:
    # a listener whose backlog is full drops new SYNs: a connect that times out
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            cfg = config(port, timeoutconnect=1)
            reports = one(tmp_path, cfg, (b"x@example.net",))
    assert reports[0].startswith(b"ZSorry, I wasn't able to establish an SMTP connection.")
    entries = TcpTo(str(tmp_path / "tcpto")).entries()
    assert [(e.ip, e.count) for e in entries] == [("127.0.0.1", 1)]


def test_tcpto_rules() -> None:
    """qmail-files §6.7: counting, the 2-minute rule, reset on success, the cap."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        t = TcpTo(d + "/tcpto")
        t.record("::1", timed_out=True, now=1000)
        t.record("::1", timed_out=True, now=1050)  # under 2 minutes later: not counted
        assert [(e.ip, e.count, e.when) for e in t.entries()] == [("::1", 1, 1000)]
        for i in range(1, 15):
            t.record("::1", timed_out=True, now=1000 + 200 * i)
        assert t.entries()[0].count == 10
        assert t.dead("::1", now=1000 + 200 * 14 + 60)
        assert not t.dead("::1", now=1000 + 200 * 14 + 60 * 64 + 32 * 64)
        t.record("::1", timed_out=False)
        assert t.entries()[0].count == 0
        assert not t.dead("::1", now=1000 + 200 * 14 + 60)
        t.record("192.0.2.1", timed_out=False)  # refused, not in the table: nothing to do
        assert len(t.entries()) == 1


def test_pool_is_bounded() -> None:
    """remoteidlemax: the oldest idle connection goes (with QUIT) when one too many."""
    from pyqmail.remote.route import Target
    from pyqmail.remote.smtp import Session

    async def go() -> list[bytes]:
        pool = Pool(idle_s=10, max_idle=2)
        peers, sessions = [], []
        for _ in range(3):
            ours, theirs = socket.socketpair()
            reader, writer = await asyncio.open_connection(sock=ours)
            sessions.append(Session(reader, writer, 5, Target("h", "192.0.2.1", 25)))
            peers.append(theirs)
        for s in sessions:
            pool.put("key", s)
        await asyncio.sleep(0.05)
        heard = []
        for p in peers:
            p.setblocking(False)
            try:
                heard.append(p.recv(100))
            except BlockingIOError:
                heard.append(b"")
            p.close()
        assert pool.take("key") is sessions[2]  # the most recent first
        assert pool.take("key") is sessions[1]
        assert pool.take("key") is None
        for s in sessions:
            s.close()
        await asyncio.sleep(0)
        return heard

    assert asyncio.run(go()) == [b"QUIT\r\n", b"", b""]
    assert not Pool(idle_s=0, max_idle=5).enabled  # remoteidletime 0: no reuse


@pytest.fixture
def broken_tls_sink(ca: trustme.CA) -> Iterator[Sink]:
    """Offers STARTTLS but fails every handshake with us: it demands a client
    certificate, which TLS 1.2 checks inside the handshake, and we have none."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with running_sink(tls_context=ctx) as sink:
        yield sink


def test_opportunistic_tls_falls_back_to_plain_text(tmp_path: Path, broken_tls_sink: Sink) -> None:
    """RFC 7435: a failed opportunistic handshake must not stop the mail."""
    reports = one(tmp_path, config(broken_tls_sink.port), (b"x@example.net",))
    assert reports[0].startswith(b"K")
    assert [m.tls for m in broken_tls_sink.messages] == [False]
    assert broken_tls_sink.connections == 2  # the failed handshake, then plain text


def test_required_tls_defers_when_the_handshake_fails(
    tmp_path: Path, broken_tls_sink: Sink
) -> None:
    cfg = dataclasses.replace(
        policy(tmp_path, "example.net:encrypt\n"),
        smtproutes={"example.net": f"127.0.0.1:{broken_tls_sink.port}"},
    )
    reports = one(tmp_path, cfg, (b"x@example.net",))
    assert reports[0].startswith(b"ZConnected to 127.0.0.1 but the TLS handshake failed")
    assert reports[0].endswith(b"(#4.7.5)\n")
    assert broken_tls_sink.messages == []


def test_clientcert_is_presented(tmp_path: Path, broken_tls_sink: Sink, ca: trustme.CA) -> None:
    """control/clientcert.pem: the server that demands a client certificate gets ours."""
    pem = tmp_path / "clientcert.pem"
    ca.issue_cert("me.example").private_key_and_cert_chain_pem.write_to_path(str(pem))
    cfg = config(broken_tls_sink.port, clientcert=str(pem))
    assert one(tmp_path, cfg, (b"x@example.net",))[0].startswith(b"K")
    assert [m.tls for m in broken_tls_sink.messages] == [True]


def test_connection_lost_after_the_dot_warns_of_a_duplicate(tmp_path: Path) -> None:
    """qmail-remote: no reply to the final dot may still mean delivered."""
    with running_sink(die_after_dot=True) as sink:
        reports = one(tmp_path, config(sink.port), (b"x@example.net", b"reject-y@example.net"))
    assert reports[0] == (
        b"ZConnected to 127.0.0.1 but connection died. Possible duplicate! (#4.4.2)\n"
    )
    assert reports[1].startswith(b"D127.0.0.1 does not like recipient.")


def test_the_most_telling_failure_is_reported() -> None:
    from pyqmail.remote.deliver import NO_CONNECTION, worst_of

    tls = b"ZConnected to 192.0.2.1 but TLS is required and ... (#4.7.4)\n"
    loop = b"DConnected to 192.0.2.2 but it greeted me as me: ... (#5.4.6)\n"
    assert worst_of([]) == NO_CONNECTION
    assert worst_of([tls, NO_CONNECTION]) == tls
    assert worst_of([NO_CONNECTION, tls]) == tls
    assert worst_of([loop, NO_CONNECTION]) == NO_CONNECTION  # the other host may come back
    assert worst_of([loop, loop]) == loop


def test_a_server_calling_itself_localhost_is_no_loop(tmp_path: Path) -> None:
    """The embedded default me is "localhost", as is many a misconfigured server."""
    with running_sink(name="localhost") as sink:
        cfg = config(sink.port, me="localhost", helohost="localhost")
        assert one(tmp_path, cfg, (b"x@example.net",))[0].startswith(b"K")


def copies_timed(tmp: Path, n: int, **sink: Any) -> tuple[Run, float, int]:
    """n copies of one message over one connection, timeoutremote 1 s, to a
    sink with the given behaviour: the reports, the time taken, and what the
    sink took."""
    with running_sink(**sink) as server:
        t0 = time.monotonic()
        run = deliver(
            tmp,
            config(server.port, timeoutremote=1),
            [(b"a@example.org", (b"x@example.net",), BODY)] * n,
        )
        return run, time.monotonic() - t0, len(server.messages)


def test_a_server_that_stops_answering_is_given_up_on_after_timeoutremote(
    tmp_path: Path,
) -> None:
    """control/timeoutremote bounds each wait, also on a reused connection:
    the first message goes, the second's final dot is never answered."""
    run, took, taken = copies_timed(tmp_path, 2, stall_at_dot=2)
    assert run.reports[0][0].startswith(b"K127.0.0.1 accepted message.")
    assert run.reports[1] == [
        b"ZConnected to 127.0.0.1 but connection died. Possible duplicate! (#4.4.2)\n"
    ]
    assert (run.opened, run.reused) == (1, 1)
    assert 1 <= took < 10
    assert taken == 1


def test_timeoutremote_bounds_each_wait_not_the_whole_session(tmp_path: Path) -> None:
    """Every reply 0.4 s late, timeoutremote 1 s: three messages over one
    connection take well over a second in all, and each is delivered."""
    run, took, taken = copies_timed(tmp_path, 3, reply_delay=0.4)
    assert [r[0][:1] for r in run.reports] == [b"K"] * 3
    assert took > 2
    assert taken == 3
