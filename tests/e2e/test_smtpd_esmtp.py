"""The built-in SMTP and submission listeners with real clients: STARTTLS,
AUTH, SMTPUTF8, enhanced status codes, recipient checks and connection limits.

One MTA serves the whole module (starting one costs seconds): it has a
trustme certificate in control/servercert.pem, a checkpassword program that
knows alice/s3cret, tcprules that give 127.0.0.1 no RELAYCLIENT (so only an
authenticated client may relay), and mail for example.net routed to a sink.
"""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
import trustme

from tests.harness import (
    BIN,
    RunningMta,
    Sink,
    init_home,
    mta_with_sink,
    pyqmail,
    swaks,
    wait_until,
    write_control,
)

# A checkpassword program (cr.yp.to/checkpwd/interface.html) in plain sh:
# user, password and timestamp, NUL-terminated, on fd 3; exec "$@" if right.
CHECKPASSWORD = """#!/bin/sh
creds=$(tr '\\0' '\\n' <&3)
user=$(printf '%s\\n' "$creds" | sed -n 1p)
pass=$(printf '%s\\n' "$creds" | sed -n 2p)
stamp=$(printf '%s\\n' "$creds" | sed -n 3p)
case "$stamp" in "<"*"@"*">") ;; *) exit 2 ;; esac
[ "$user" = alice ] && [ "$pass" = s3cret ] || exit 1
exec "$@"
"""
BODY = b"Subject: esmtp\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def mta(
    tmp_path_factory: pytest.TempPathFactory, ca: trustme.CA
) -> Iterator[tuple[RunningMta, Sink]]:
    home = tmp_path_factory.mktemp("esmtp") / "qmail"
    init_home(home)
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(home / "control" / "servercert.pem")
    )
    checker = home.parent / "checkpassword.sh"
    checker.write_text(CHECKPASSWORD)
    checker.chmod(0o755)
    write_control(home, "checkpassword", f"{checker}\n")
    write_control(home, "tcprules.smtp", "127.:allow\n:allow\n")
    write_control(home, "maxconnectionsperip", "3\n")
    write_control(home, "maxrcpt", "3\n")
    assert pyqmail("adduser", "alice", "--home", str(home)).returncode == 0
    (home / "mailboxes" / "alice" / ".qmail-default").unlink()  # alice-x@ is nobody
    with mta_with_sink(home) as pair:
        yield pair


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def ehlo_keywords(c: smtplib.SMTP) -> set[str]:
    code, _ = c.ehlo("client.example")
    assert code == 250
    return set(c.esmtp_features)


def test_ehlo_advertises_the_modern_extensions(mta: tuple[RunningMta, Sink]) -> None:
    m, _ = mta
    with smtplib.SMTP("127.0.0.1", m.smtp_port, timeout=10) as c:
        keywords = ehlo_keywords(c)
        # RFC 2034: after EHLO every reply but 3xx carries an enhanced code
        assert c.noop() == (250, b"2.0.0 ok")
        assert c.mail("a@example.org") == (250, b"2.1.0 ok")
    assert {"pipelining", "8bitmime", "size", "chunking"} <= keywords
    assert {"enhancedstatuscodes", "smtputf8", "starttls"} <= keywords
    assert "auth" not in keywords  # AUTH lives on the submission port


def test_smtplib_starttls_then_mail_is_delivered(
    mta: tuple[RunningMta, Sink], ca: trustme.CA
) -> None:
    m, _ = mta
    before = len(m.maildir_files("postmaster"))
    with smtplib.SMTP("127.0.0.1", m.smtp_port, timeout=10) as c:
        c.ehlo("client.example")
        assert c.starttls(context=client_context(ca))[0] == 220
        sock = c.sock
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        keywords = ehlo_keywords(c)
        assert "starttls" not in keywords  # RFC 3207 §4.2: not offered twice
        c.sendmail("a@example.org", ["postmaster@localhost"], BODY)
    files = m.wait_for_maildir("postmaster", before + 1)
    assert any(b"Subject: esmtp" in f.read_bytes() for f in files)


def test_plaintext_pipelined_after_starttls_is_never_executed(
    mta: tuple[RunningMta, Sink], ca: trustme.CA
) -> None:
    # CVE-2011-0411: "STARTTLS\r\nRSET-like command" in one packet; the
    # injected command must not be answered inside TLS.
    m, _ = mta
    with socket.create_connection(("127.0.0.1", m.smtp_port), timeout=10) as raw:
        f = raw.makefile("rb")
        assert f.readline().startswith(b"220")
        raw.sendall(b"EHLO x\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        raw.sendall(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
        assert f.readline().startswith(b"220")
        with client_context(ca).wrap_socket(raw, server_hostname="localhost") as tls:
            tf = tls.makefile("rb")
            tls.sendall(b"RCPT TO:<postmaster@localhost>\r\n")
            # had the injected MAIL run, this RCPT would be accepted
            assert tf.readline().startswith(b"503 MAIL first")
            tls.sendall(b"QUIT\r\n")
            assert tf.readline().startswith(b"221")


def test_swaks_plain_pipeline_and_tls(mta: tuple[RunningMta, Sink]) -> None:
    m, _ = mta
    before = len(m.maildir_files("postmaster"))
    for extra in ([], ["--pipeline"], ["--tls"]):
        out = swaks(
            m.smtp_port,
            *["--to", "postmaster@localhost", "--from", "a@example.org", *extra],
            *["--header", f"Subject: swaks {' '.join(extra) or 'plain'}"],
        )
        assert out.returncode == 0, out.stdout + out.stderr
        if extra == ["--tls"]:
            assert "TLS started" in out.stdout
    files = m.wait_for_maildir("postmaster", before + 3)
    subjects = b"".join(f.read_bytes() for f in files)
    for name in (b"plain", b"--pipeline", b"--tls"):
        assert b"Subject: swaks " + name in subjects


def test_unknown_local_recipients_are_refused_at_rcpt(mta: tuple[RunningMta, Sink]) -> None:
    m, _ = mta
    with smtplib.SMTP("127.0.0.1", m.smtp_port, timeout=10) as c:
        c.ehlo("client.example")
        assert c.mail("a@example.org")[0] == 250
        code, text = c.rcpt("nobody-here@localhost")
        assert (code, text) == (550, b"5.1.1 sorry, no mailbox here by that name")
        assert c.rcpt("alice-x@localhost")[0] == 550  # no .qmail-x, no .qmail-default
        assert c.rcpt("alice@localhost")[0] == 250
        assert c.rcpt("postmaster-anything@localhost")[0] == 250  # .qmail-default
        assert c.rcpt("mailer-daemon@localhost")[0] == 250  # alias/.qmail-mailer-daemon
    # refused at RCPT: nothing queued, so nothing can bounce later (backscatter)
    assert "nobody-here" not in m.log()


def test_recipient_limit_is_452_per_transaction(mta: tuple[RunningMta, Sink]) -> None:
    m, _ = mta
    with smtplib.SMTP("127.0.0.1", m.smtp_port, timeout=10) as c:
        c.ehlo("client.example")
        c.mail("a@example.org")
        for _ in range(3):
            assert c.rcpt("postmaster@localhost")[0] == 250
        assert c.rcpt("postmaster@localhost")[0] == 452  # RFC 5321 §4.5.3.1.10


def test_connections_per_ip_are_bounded(mta: tuple[RunningMta, Sink]) -> None:
    m, _ = mta
    held: list[socket.socket] = []
    greetings = []
    try:
        # earlier tests' sessions may still be winding down and count too
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", m.smtp_port), timeout=10)
            held.append(s)
            greetings.append(s.makefile("rb").readline()[:3])
    finally:
        for s in held:
            s.close()
    assert greetings.count(b"220") <= 3  # control/maxconnectionsperip
    assert greetings[-2:] == [b"421", b"421"]

    def accepted_again() -> bool:
        with socket.create_connection(("127.0.0.1", m.smtp_port), timeout=10) as s:
            return s.makefile("rb").readline().startswith(b"220")

    wait_until(accepted_again, 20, "the per-IP count to drop after the clients left")


def test_smtputf8_send_message(mta: tuple[RunningMta, Sink]) -> None:
    m, _ = mta
    before = len(m.maildir_files("postmaster"))
    msg = EmailMessage()
    msg["From"] = "Jöran <jöran@exämple.org>"
    msg["To"] = "postmaster@localhost"
    msg["Subject"] = "grüße"
    msg.set_content("ünïcödé body\n")
    with smtplib.SMTP("127.0.0.1", m.smtp_port, timeout=10) as c:
        c.ehlo("client.example")
        assert c.has_extn("smtputf8")
        # smtplib adds SMTPUTF8 and BODY=8BITMIME for the non-ASCII sender
        assert c.send_message(msg) == {}
        c.command_encoding = "utf-8"
        code, text = c.docmd("MAIL", "FROM:<jöran@exämple.org>")  # without SMTPUTF8
        assert (code, text[:5]) == (553, b"5.6.7")  # RFC 6531 §3.4
    files = m.wait_for_maildir("postmaster", before + 1)
    raw = b"".join(f.read_bytes() for f in files)
    assert "Return-Path: <jöran@exämple.org>".encode() in raw


# -- submission (RFC 6409) with AUTH (RFC 4954) -------------------------------


def test_submission_needs_auth_then_relays(mta: tuple[RunningMta, Sink]) -> None:
    m, sink = mta
    # without RELAYCLIENT the SMTP port refuses to relay
    with smtplib.SMTP("127.0.0.1", m.smtp_port, timeout=10) as c:
        c.ehlo("client.example")
        c.mail("alice@localhost")
        assert c.rcpt("friend@example.net")[0] == 553
    with smtplib.SMTP("127.0.0.1", m.submission_port, timeout=10) as c:
        keywords = ehlo_keywords(c)
        assert keywords >= {"auth", "starttls"}  # loopback: AUTH offered before TLS too
        assert c.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert c.mail("alice@localhost")[0] == 530  # submission: AUTH first
        c.rset()
        assert c.login("alice", "s3cret")[0] == 235
        c.sendmail("alice@localhost", ["friend@example.net"], BODY)
    wait_until(lambda: len(sink.messages) >= 1, 30, "the relayed message at the sink")
    assert sink.messages[-1].rcpts == [b"friend@example.net"]
    assert "smtpd: info: smtpd auth ok user alice from 127.0.0.1" in m.log()


def test_submission_auth_login_over_starttls(mta: tuple[RunningMta, Sink], ca: trustme.CA) -> None:
    m, _ = mta
    with smtplib.SMTP("127.0.0.1", m.submission_port, timeout=10) as c:
        c.ehlo("client.example")
        c.starttls(context=client_context(ca))
        c.ehlo("client.example")
        c.user, c.password = "alice", "s3cret"
        assert c.auth("LOGIN", c.auth_login)[0] == 235


def test_wrong_passwords_are_slowed_and_bounded(mta: tuple[RunningMta, Sink]) -> None:
    m, _ = mta
    with smtplib.SMTP("127.0.0.1", m.submission_port, timeout=30) as c:
        c.ehlo("client.example")
        c.user, c.password = "alice", "wrong"
        codes = []
        for _ in range(3):
            with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
                c.auth("PLAIN", c.auth_plain, initial_response_ok=True)
            codes.append(failed.value.smtp_code)
        assert codes == [535, 535, 421]  # the third failure ends the session
        with pytest.raises(smtplib.SMTPServerDisconnected):
            c.noop()
    assert "smtpd auth failed user alice from 127.0.0.1" in m.log()


def test_swaks_auth_over_tls(mta: tuple[RunningMta, Sink]) -> None:
    m, sink = mta
    count = len(sink.messages)
    for mech in ("PLAIN", "LOGIN"):
        out = swaks(
            m.submission_port,
            "--tls",
            *["--auth", mech, "--auth-user", "alice", "--auth-password", "s3cret"],
            *["--from", "alice@localhost", "--to", "buddy@example.net"],
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "235 " in out.stdout
    wait_until(lambda: len(sink.messages) >= count + 2, 30, "both relayed messages")


def test_auth_with_pyqmail_passwd_and_the_default_checker(mta: tuple[RunningMta, Sink]) -> None:
    # Last in this module: it switches the MTA to the default checker.
    m, _ = mta
    res = subprocess.run(
        [str(BIN / "pyqmail"), "passwd", "alice", "--home", str(m.home)],
        input="correct horse\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    (m.home / "control" / "checkpassword").unlink()  # default: pyqmail-checkpassword
    os.kill(m.proc.pid, signal.SIGHUP)  # start passes HUP to lookup, which rereads it

    def login_works() -> bool:
        with smtplib.SMTP("127.0.0.1", m.submission_port, timeout=30) as c:
            c.ehlo("client.example")
            try:
                c.login("alice", "correct horse")
            except smtplib.SMTPAuthenticationError:
                return False
            return True

    wait_until(login_works, 30, "the default checker to accept pyqmail passwd's password")
    with smtplib.SMTP("127.0.0.1", m.submission_port, timeout=30) as c:
        c.ehlo("client.example")
        with pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
            c.login("alice", "s3cret")  # the sh checker's password means nothing now
        assert wrong.value.smtp_code == 535
