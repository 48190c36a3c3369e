"""QMTP and QMQP between pyqmail instances over loopback (issue #7).

Two homes, two `pyqmail start` processes: a queue server ("b.example") and
a client or mini node. Real sockets, real Maildirs, qmail-qmqpc run as a
program with its fds, and qmail-qmtpd under a real tcpserver.
"""

from __future__ import annotations

import contextlib
import email
import os
import shutil
import smtplib
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqmail.formats.envelope import Envelope, format_wire
from pyqmail.formats.netstring import encode
from pyqmail.proto.qmtp.client import ResponseReader, qmqp_frame, qmtp_package
from tests.harness import (
    BIN,
    RunningMta,
    environ_with_home,
    init_home,
    mta_with_sink,
    pyqmail,
    running_mta,
    wait_until,
    write_control,
)

BODY = b"Subject: netstrings\n\nline one\n.leading dot\n\nlast\n"
# QMTP's LF encoding carries any byte: a CR LF inside a line arrives as sent
BODY_CR = b"Subject: netstrings\n\nline one\r\nbare\rCR\n"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningMta]:
    """The queue server: mail for b.example is local; QMTP and QMQP on free ports."""
    home = tmp_path / "server"
    init_home(home, "--me", "b.example")
    with running_mta(home, "--qmtp", "127.0.0.1:0", "--qmqp", "127.0.0.1:0") as mta:
        yield mta


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port nothing listens on (held bound so nobody else takes it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def exchange(port: int, wire: bytes, responses: int) -> list[tuple[str, bytes]]:
    """Send wire, read that many QMTP/QMQP responses (or until the server closes)."""
    got: list[tuple[str, bytes]] = []
    reader = ResponseReader()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(wire)
            while len(got) < responses:
                r = reader.next_response()
                if r is not None:
                    got.append((r.status, r.text))
                    continue
                data = s.recv(65536)
                if not data:
                    break
                reader.receive_data(data)
        except (ConnectionResetError, BrokenPipeError):
            pass  # a dropped connection: whatever was answered stands
    return got


def delivered(mta: RunningMta, count: int = 1) -> list[bytes]:
    return [p.read_bytes() for p in mta.wait_for_maildir("postmaster", count, timeout=30)]


def body_of(raw: bytes) -> bytes:
    return b"Subject:" + raw.split(b"\nSubject:", 1)[1]


def test_qmtp_spec_example_and_several_packages(server: RunningMta) -> None:
    """§7.2: the worked example byte for byte, then a second package on the same
    connection; every recipient gets its own K/Z/D in order."""
    port = server.port("qmtp")
    example = b"20:\nSubject: hi\n\nhello\n,13:a@example.org,24:20:postmaster@b.example,,"
    crlf = (
        encode(b"\rSubject: two\r\n\r\nbody\r\n")
        + encode(b"")
        + encode(encode(b"postmaster@b.example"))
    )
    got = exchange(port, example + crlf, 2)
    assert [s for s, _t in got] == ["K", "K"]
    assert got[0][1].startswith(b"ok ")
    assert b" qp " in got[0][1]
    raws = delivered(server, 2)
    bodies = sorted(body_of(r) for r in raws)
    assert bodies == [b"Subject: hi\n\nhello\n", b"Subject: two\n\nbody\n"]
    for raw in raws:
        msg = email.message_from_bytes(raw)
        received = msg.get_all("Received") or []
        assert any("(127.0.0.1)" in r and "with QMTP" in r for r in received), received


def test_qmtp_relay_rules_and_databytes(server: RunningMta, tmp_path: Path) -> None:
    """qmail-qmtpd's texts: rcpthosts per recipient without RELAYCLIENT, databytes for
    the whole package, an unacceptable sender; only the good recipient gets mail."""
    home = server.home
    write_control(home, "tcprules.qmtp", ":allow\n")  # no RELAYCLIENT for anyone
    write_control(home, "databytes", "200\n")
    server.stop()
    with running_mta(home, "--qmtp", "127.0.0.1:0") as mta:
        port = mta.port("qmtp")
        ok = qmtp_package(
            BODY_CR, b"a@example.org", [b"x@elsewhere.example", b"postmaster@b.example"]
        )
        big = qmtp_package(b"x" * 300 + b"\n", b"a@example.org", [b"postmaster@b.example"])
        bad_sender = qmtp_package(BODY, b"a\0b", [b"postmaster@b.example"])
        got = exchange(port, ok + big + bad_sender, 4)
        assert got == [
            ("D", b"sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"),
            got[1],
            ("D", b"sorry, that message size exceeds my databytes limit (#5.3.4)"),
            ("D", b"unacceptable sender (#5.1.7)"),
        ]
        assert got[1][0] == "K"
        (raw,) = delivered(mta, 1)
        assert body_of(raw) == BODY_CR
        # nothing else arrives: the refused packages were never queued
        wait_until(mta.queue_empty, 30, "the queue to drain")
        assert len(mta.maildir_files("postmaster")) == 1


GARBAGE = [
    b"020:\nSubject: x\n\nhello\n,",  # leading zero
    b"3:\nab;",  # missing comma
    b"12345678901234567890:",  # a length refused before anything is allocated
    b"hello world\r\n",  # SMTP at a QMTP port
]


def test_qmtp_garbage_is_dropped_and_the_server_keeps_serving(server: RunningMta) -> None:
    port = server.port("qmtp")
    good = qmtp_package(BODY, b"a@example.org", [b"postmaster@b.example"])
    for garbage in GARBAGE:
        assert exchange(port, garbage, 1) == [], garbage  # no answer: dropped
        assert exchange(port, good, 1)[0][0] == "K"
    assert server.log().count("protocol violation") == len(GARBAGE)
    delivered(server, len(GARBAGE))


def test_qmqp_qmqpc_fails_over_to_the_second_server(
    server: RunningMta, tmp_path: Path, dead_port: int
) -> None:
    """qmail-qmqpc: message on fd 0, envelope on fd 1; the first server in
    control/qmqpservers is down, the second takes the message (exit 0)."""
    client = tmp_path / "client"
    (client / "control").mkdir(parents=True)
    write_control(
        client, "qmqpservers", f"127.0.0.1:{dead_port}\n127.0.0.1:{server.port('qmqp')}\n"
    )
    env = format_wire(Envelope(b"a@example.org", (b"postmaster@b.example",)))
    code = run_qq(client, BODY_CR, env)
    assert code == 0
    (raw,) = delivered(server)
    assert body_of(raw) == BODY_CR
    received = email.message_from_bytes(raw).get_all("Received") or []
    assert any("with QMQP" in r for r in received), received


def test_qmqpc_exit_codes(server: RunningMta, tmp_path: Path, dead_port: int) -> None:
    """73 all refused, 55 no servers, 91 bad envelope, 31 when the server says D."""
    client = tmp_path / "client"
    (client / "control").mkdir(parents=True)
    env = format_wire(Envelope(b"a@example.org", (b"postmaster@b.example",)))
    write_control(client, "qmqpservers", f"127.0.0.1:{dead_port}\n")
    assert run_qq(client, BODY, env) == 73
    write_control(client, "qmqpservers", "")
    assert run_qq(client, BODY, env) == 55
    write_control(client, "qmqpservers", "not-an-ip\n")
    assert run_qq(client, BODY, env) == 55
    write_control(client, "qmqpservers", f"127.0.0.1:{server.port('qmqp')}\n")
    assert run_qq(client, BODY, b"Xbad\0\0") == 91
    long_rcpt = format_wire(Envelope(b"a@example.org", (b"x" * 2000 + b"@b.example",)))
    assert run_qq(client, BODY, long_rcpt) == 11  # refused before any connection
    # a recipient with a NUL cannot pass the envelope, so ask for D another way:
    write_control(server.home, "databytes", "10\n")
    server.stop()
    with running_mta(server.home, "--qmqp", "127.0.0.1:0") as again:
        write_control(client, "qmqpservers", f"127.0.0.1:{again.port('qmqp')}\n")
        assert run_qq(client, BODY, env) == 31


def run_qq(home: Path, message: bytes, envelope: bytes, program: str = "qmail-qmqpc") -> int:
    """A qmail-queue program (qmail-qmqpc by default) with the message on fd 0
    and the envelope readable on fd 1."""
    msg_fd, env_fd = read_end(message), read_end(envelope)
    try:
        proc = subprocess.run(
            [str(BIN / program)],
            stdin=msg_fd,
            stdout=env_fd,
            env=environ_with_home(home),
            timeout=60,
            check=False,
        )
    finally:
        os.close(msg_fd)
        os.close(env_fd)
    return proc.returncode


def read_end(data: bytes) -> int:
    """A pipe already holding data (small: fits the pipe buffer), as its read fd."""
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return r


def test_qmtp_remote_delivery_between_two_mtas(server: RunningMta, tmp_path: Path) -> None:
    """control/qmtproutes sends b.example's mail over QMTP; it lands in the
    other instance's Maildir byte for byte, with a QMTP Received line there."""
    home = tmp_path / "sender"
    init_home(home)
    write_control(home, "qmtproutes", f"b.example:127.0.0.1:{server.port('qmtp')}\n")
    with running_mta(home) as sender:
        with smtplib.SMTP("127.0.0.1", sender.smtp_port, timeout=30) as c:
            c.sendmail("a@localhost", ["postmaster@b.example"], BODY.replace(b"\n", b"\r\n"))
        (raw,) = delivered(server)
        wait_until(lambda: "accepted message" in sender.log(), 30, "the delivery report")
    assert body_of(raw) == BODY
    received = email.message_from_bytes(raw).get_all("Received") or []
    assert any("with QMTP" in r for r in received), received
    assert any("with SMTP" in r for r in received), received  # the sender's own hop


def test_mini_node_hands_everything_to_the_queue_server(
    server: RunningMta, tmp_path: Path, dead_port: int
) -> None:
    """`pyqmail start --mini`: no queue; SMTP and qmail-queue on the mini node are
    answered only after the queue server said K, and the mail arrives intact in
    the queue server's Maildir. The first QMQP server is down (failover)."""
    home = tmp_path / "mini"
    init_home(home)
    write_control(home, "qmqpservers", f"127.0.0.1:{dead_port}\n127.0.0.1:{server.port('qmqp')}\n")
    wire = BODY.replace(b"\n", b"\r\n")
    with running_mta(home, "--mini") as mini:
        with smtplib.SMTP("127.0.0.1", mini.smtp_port, timeout=30) as c:
            c.ehlo("client.example")
            refused = c.sendmail("a@example.org", ["postmaster@b.example"], wire)
        assert refused == {}
        env = format_wire(Envelope(b"b@example.org", (b"postmaster@b.example",)))
        message = b"Subject: via qmail-queue\n\nhi\n"
        assert run_qq(home, message, env, program="qmail-queue") == 0
        raws = delivered(server, 2)
        # the mini node has no queue of its own: nothing was ever written there
        assert mini.queue_empty()
        assert "qmqp 127.0.0.1:" in mini.log()
    smtp_raw = next(r for r in raws if b"Subject: netstrings" in r)
    assert body_of(smtp_raw) == BODY
    received = email.message_from_bytes(smtp_raw).get_all("Received") or []
    assert any("(HELO client.example)" in r and "with SMTP" in r for r in received)
    assert any("with QMQP" in r for r in received)
    assert any(b"Subject: via qmail-queue" in r for r in raws)


def test_mini_node_with_every_server_down_says_451_and_keeps_nothing(
    tmp_path: Path, dead_port: int
) -> None:
    home = tmp_path / "mini"
    init_home(home)
    write_control(home, "qmqpservers", f"127.0.0.1:{dead_port}\n")
    with running_mta(home, "--mini") as mini:
        with smtplib.SMTP("127.0.0.1", mini.smtp_port, timeout=30) as c:
            c.mail("a@example.org")
            c.rcpt("postmaster@b.example")
            code, text = c.data(BODY.replace(b"\n", b"\r\n"))
        assert code == 451
        assert b"connection to mail server rejected" in text


@pytest.mark.parametrize("program", ["qmail-qmtpd", "qmail-qmqpd"])
def test_under_tcpserver(server: RunningMta, program: str) -> None:
    """qmail-qmtpd / qmail-qmqpd on fd 0/1 under a real tcpserver, as qmail runs
    them; tcpserver's TCPREMOTEIP reaches the Received line; without RELAYCLIENT
    in its environment QMTP checks rcpthosts, QMQP (trusted clients) does not."""
    if shutil.which("tcpserver") is None:
        pytest.skip("ucspi-tcp not installed (make test installs it when root)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = environ_with_home(server.home)
    proc = subprocess.Popen(
        ["tcpserver", "-R", "-H", "127.0.0.1", str(port), str(BIN / program)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    rcpts = [b"postmaster@b.example", b"x@elsewhere.example"]
    try:

        def listening() -> bool:
            with socket.socket() as c:
                return c.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, 10, "tcpserver to listen")
        if program == "qmail-qmtpd":
            wire = qmtp_package(BODY, b"a@example.org", rcpts)
            got = exchange(port, wire + wire, 4)
            assert [s for s, _t in got] == ["K", "D", "K", "D"]
            assert got[1][1] == b"sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)"
            proto, count = "QMTP", 2
        else:
            prefix, suffix = qmqp_frame(len(BODY), b"a@example.org", rcpts[:1])
            assert exchange(port, prefix + BODY + suffix, 1)[0][0] == "K"
            proto, count = "QMQP", 1
        raws = delivered(server, count)
    finally:
        proc.terminate()
        proc.wait(10)
    received = email.message_from_bytes(raws[0]).get_all("Received") or []
    assert any(f"(127.0.0.1)\n  by 127.0.0.1 with {proto}" in r for r in received), received


def test_qmqp_listener_spec_example_rules_and_garbage(server: RunningMta) -> None:
    """§7.3's request shape byte for byte; one answer, then the server closes;
    a malformed request gets no answer; tcprules.qmqp can shut a client out."""
    port = server.port("qmqp")
    example = b"64:19:Subject: hi\n\nhello\n,13:a@example.org,20:postmaster@b.example,,"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(example)
        reply = b""
        while chunk := s.recv(4096):  # the server closes after its one answer
            reply += chunk
    assert reply.endswith(b",")
    assert b":Kok " in reply
    assert body_of(delivered(server)[0]) == b"Subject: hi\n\nhello\n"
    assert exchange(port, b"64:019:", 1) == []  # leading zero: dropped
    write_control(server.home, "tcprules.qmqp", "127.0.0.1:deny\n:allow\n")
    server.stop()
    with running_mta(server.home, "--qmqp", "127.0.0.1:0") as again:
        assert exchange(again.port("qmqp"), example, 1) == []


def test_mini_without_qmqpservers_refuses_to_start(tmp_path: Path) -> None:
    home = tmp_path / "mini"
    init_home(home)
    res = pyqmail("start", "--home", str(home), "--mini", "--smtp", "off", "--qmtp", "off")
    assert res.returncode != 0
    assert "qmqpservers is empty" in res.stderr


def test_qmtp_route_down_falls_back_to_smtp(tmp_path: Path, dead_port: int) -> None:
    """No QMTP connection can be made: the same delivery goes out over SMTP."""
    home = tmp_path / "sender"
    init_home(home)
    write_control(home, "qmtproutes", f"example.net:127.0.0.1:{dead_port}\n")
    with mta_with_sink(home) as (mta, sink):
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=30) as c:
            c.sendmail("a@localhost", ["someone@example.net"], BODY.replace(b"\n", b"\r\n"))
        wait_until(lambda: bool(sink.messages), 30, "the SMTP fallback delivery")
    assert sink.messages[0].rcpts == [b"someone@example.net"]
    assert sink.messages[0].data.endswith(BODY.replace(b"\n", b"\r\n"))


@contextlib.contextmanager
def z_server() -> Iterator[int]:
    """A QMQP server that takes nothing: it answers every request with Z."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _peer = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                data = b""
                while not data.endswith(b",,"):  # the end of a request's last netstring
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(encode(b"Zdisk full here, try another server (#4.3.0)"))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_qmqpc_moves_on_after_a_z(server: RunningMta, tmp_path: Path, dead_port: int) -> None:
    """A Z means the server kept nothing: the next server in the pool gets the message.
    With only Z and dead servers left, the exit is 71 (the Z), not 73."""
    client = tmp_path / "client"
    (client / "control").mkdir(parents=True)
    env = format_wire(Envelope(b"a@example.org", (b"postmaster@b.example",)))
    with z_server() as zport:
        write_control(client, "qmqpservers", f"127.0.0.1:{zport}\n127.0.0.1:{dead_port}\n")
        assert run_qq(client, BODY, env) == 71
        write_control(
            client, "qmqpservers", f"127.0.0.1:{zport}\n127.0.0.1:{server.port('qmqp')}\n"
        )
        assert run_qq(client, BODY, env) == 0
    (raw,) = delivered(server)
    assert body_of(raw) == BODY


def test_qmail_inject_through_qmqpc(server: RunningMta, tmp_path: Path) -> None:
    """netqmail's $QMAILQUEUE: qmail-inject on a host with no pyqmail running hands
    the message to qmail-qmqpc, which gives it to the queue server (mini-qmail)."""
    home = tmp_path / "client"
    init_home(home)
    write_control(home, "qmqpservers", f"127.0.0.1:{server.port('qmqp')}\n")
    env = environ_with_home(home)
    env["QMAILQUEUE"] = str(BIN / "qmail-qmqpc")
    res = subprocess.run(
        [str(BIN / "qmail-inject"), "postmaster@b.example"],
        input=b"From: a@localhost\nSubject: injected via qmqpc\n\nhello\n",
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    (raw,) = delivered(server)
    msg = email.message_from_bytes(raw)
    assert msg["Subject"] == "injected via qmqpc"
    assert any("with QMQP" in r for r in msg.get_all("Received") or [])
    assert not any((home / "queue" / "todo").iterdir())  # nothing queued locally
