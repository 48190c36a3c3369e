"""qmail-smtpd on stdin/stdout under a real tcpserver (ucspi-tcp), as qmail runs it."""

from __future__ import annotations

import email
import shutil
import smtplib
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
import trustme

from tests.harness import BIN, environ_with_home, init_home, running_mta, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_qmail_smtpd_under_tcpserver(tmp_path: Path) -> None:
    if shutil.which("tcpserver") is None:
        pytest.skip("ucspi-tcp not installed (make test installs it when root)")
    home = tmp_path / "qmail"
    init_home(home)
    ca = trustme.CA()
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(home / "control" / "servercert.pem")
    )
    port = free_port()
    with running_mta(home) as mta:
        server = subprocess.Popen(
            ["tcpserver", "-R", "-H", "127.0.0.1", str(port), str(BIN / "qmail-smtpd")],
            env=environ_with_home(home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:

            def listening() -> bool:
                with socket.socket() as s:
                    return s.connect_ex(("127.0.0.1", port)) == 0

            wait_until(listening, 10, "tcpserver to listen")
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
                c.ehlo("client.example")
                c.sendmail(
                    "a@example.org",
                    ["postmaster@localhost"],
                    b"Subject: via tcpserver\r\n\r\nhello\r\n",
                )
                # not relaying for strangers: tcpserver set no RELAYCLIENT here
                c.mail("a@example.org")
                assert c.rcpt("x@elsewhere.example")[0] == 553
                assert c.rcpt("nobody-here@localhost")[0] == 550  # checked at RCPT
            # STARTTLS on fds 0/1: TLS runs in memory BIOs inside qmail-smtpd
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
                c.ehlo("client.example")
                assert c.starttls(context=ctx)[0] == 220
                c.ehlo("client.example")
                c.sendmail(
                    "a@example.org",
                    ["postmaster@localhost"],
                    b"Subject: via tcpserver and TLS\r\n\r\nhello\r\n",
                )
            files = mta.wait_for_maildir("postmaster", 2)
        finally:
            server.terminate()
            server.wait(10)
    assert b"Subject: via tcpserver and TLS" in b"".join(f.read_bytes() for f in files)
    files = [f for f in files if b"Subject: via tcpserver\n" in f.read_bytes()]
    msg = email.message_from_bytes(files[0].read_bytes())
    assert msg["Subject"] == "via tcpserver"
    received = msg.get_all("Received")
    assert received is not None
    # tcpserver's TCPREMOTEIP and TCPLOCALIP reach qmail's Received line
    assert any(
        "(HELO client.example) (127.0.0.1)" in r and "by 127.0.0.1 with SMTP" in r for r in received
    ), received
