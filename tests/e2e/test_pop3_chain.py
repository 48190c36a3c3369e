"""qmail's POP3 chain as qmail runs it: tcpserver qmail-popup HOST
pyqmail-checkpassword qmail-pop3d Maildir, on stdin/stdout."""

from __future__ import annotations

import contextlib
import os
import poplib
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_pop3 import PASSWORD, add_pop_user, pop_error, send, write_servercert
from tests.harness import BIN, environ_with_home, init_home, running_mta, wait_until

CHAIN = [
    str(BIN / "qmail-popup"),
    "pop.example",
    str(BIN / "pyqmail-checkpassword"),
    str(BIN / "qmail-pop3d"),
    "Maildir",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def tcpserver(home: Path) -> Iterator[int]:
    port = free_port()
    server = subprocess.Popen(
        ["tcpserver", "-R", "-H", "127.0.0.1", str(port), *CHAIN],
        env=environ_with_home(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its sessions too are ended below, by group
    )
    try:

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, 10, "tcpserver to listen")
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)


def test_chain_under_tcpserver_plain_and_stls(tmp_path: Path) -> None:
    if shutil.which("tcpserver") is None:
        pytest.skip("ucspi-tcp not installed (make test installs it when root)")
    home = tmp_path / "qmail"
    init_home(home)
    add_pop_user(home, "alice")
    client_ctx = write_servercert(home)
    with running_mta(home) as mta:
        send(mta, "alice@localhost", "chained", ".dot first\r\nbody\r\n")
        send(mta, "alice@localhost", "second", "two\r\n")
        files = mta.wait_for_maildir("alice", 2)
    with tcpserver(home) as port:
        p = poplib.POP3("127.0.0.1", port, timeout=30)
        assert p.getwelcome().startswith(b"+OK <")
        assert p.getwelcome().endswith(b"@pop.example>")  # qmail-popup's HOSTNAME argument
        p.user("alice")
        p.pass_(PASSWORD)
        assert p.stat() == (2, sum(f.stat().st_size for f in files))
        uidls = p.uidl()[1]
        p.quit()

        p = poplib.POP3("127.0.0.1", port, timeout=30)
        assert "STLS" in p.capa()
        p.stls(context=client_ctx)
        # after STLS the whole chain talks through qmail-popup's TLS relay
        p.user("alice")
        p.pass_(PASSWORD)
        assert p.uidl()[1] == uidls
        texts = [b"\n".join(p.retr(n)[1]) for n in (1, 2)]
        chained = next(t for t in texts if b"Subject: chained" in t)
        assert chained.endswith(b"\n\n.dot first\nbody")
        n = 1 if texts[0] is chained else 2
        p.dele(n)
        p.quit()
        assert len(mta.maildir_files("alice")) == 1

        p = poplib.POP3("127.0.0.1", port, timeout=30)
        p.user("alice")
        assert b"authorization failed" in pop_error(p.pass_, "not the password")
        p.close()


def popup_on_socketpair(
    home: Path, remote_ip: str
) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    ours, theirs = socket.socketpair()
    env = environ_with_home(home)
    env["TCPREMOTEIP"] = remote_ip
    proc = subprocess.Popen(CHAIN, stdin=theirs.fileno(), stdout=theirs.fileno(), env=env)
    theirs.close()
    ours.settimeout(30)
    return ours, proc


def reply(sock: socket.socket | ssl.SSLSocket, end: bytes = b"\r\n") -> bytes:
    got = b""
    while not got.endswith(end):
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk
    return got


def test_passwords_only_inside_tls_off_loopback(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    add_pop_user(home, "alice")
    client_ctx = write_servercert(home)
    sock, proc = popup_on_socketpair(home, "192.0.2.7")
    opened: list[socket.socket] = [sock]
    try:
        assert reply(sock).startswith(b"+OK <")
        sock.sendall(b"CAPA\r\n")
        caps = reply(sock, b"\r\n.\r\n").split(b"\r\n")
        assert b"STLS" in caps
        assert b"USER" not in caps
        sock.sendall(b"USER alice\r\n")
        assert reply(sock).startswith(b"-ERR use STLS first")
        sock.sendall(b"STLS\r\n")
        assert reply(sock) == b"+OK begin TLS\r\n"
        tls = client_ctx.wrap_socket(sock, server_hostname="localhost")
        opened.append(tls)
        tls.sendall(b"CAPA\r\n")
        caps = reply(tls, b"\r\n.\r\n").split(b"\r\n")
        assert b"USER" in caps
        assert b"STLS" not in caps
        tls.sendall(b"USER alice\r\nPASS " + PASSWORD.encode() + b"\r\nSTAT\r\nQUIT\r\n")
        assert reply(tls) == b"+OK \r\n"  # USER
        got = reply(tls, b"+OK 0 0\r\n+OK \r\n")  # PASS (from qmail-pop3d), STAT, QUIT
        assert got == b"+OK \r\n+OK 0 0\r\n+OK \r\n"
    finally:
        for s in opened:
            s.close()
        assert proc.wait(30) == 1  # qmail-popup exits 1 in all cases


def test_without_a_certificate_nothing_is_offered_off_loopback(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    add_pop_user(home, "alice")
    sock, proc = popup_on_socketpair(home, "192.0.2.7")
    try:
        assert reply(sock).startswith(b"+OK <")
        sock.sendall(b"CAPA\r\nSTLS\r\nUSER alice\r\nPASS x\r\nQUIT\r\n")
        got = reply(sock, b"+OK \r\n").split(b"\r\n")
        assert b"STLS" not in got[:-5]
        assert got[-5:] == [
            b"-ERR STLS not available",
            b"-ERR use STLS first: no passwords in the clear",
            b"-ERR use STLS first: no passwords in the clear",
            b"+OK ",
            b"",
        ]
    finally:
        sock.close()
        assert proc.wait(30) == 1
