"""The spine end to end: real sockets, real files, the whole MTA (issue #2)."""

from __future__ import annotations

import email
import mailbox
import os
import re
import smtplib
import subprocess
from pathlib import Path

import pytest

from tests.harness import (
    BIN,
    environ_with_home,
    mta_with_sink,
    pyqmail,
    run_tool,
    running_mta,
    swaks,
    wait_until,
    write_control,
)

BODY = b"Subject: spine\r\nMessage-ID: <1@test>\r\n\r\nline one\r\n.leading dot\r\n\r\nlast\r\n"


def test_smtplib_to_local_maildir_byte_for_byte(home: Path) -> None:
    with running_mta(home) as mta:
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=10) as client:
            client.sendmail("a@example.org", ["postmaster@localhost"], BODY)
        files = mta.wait_for_maildir("postmaster")
    md = mailbox.Maildir(str(home / "mailboxes" / "postmaster" / "Maildir"), create=False)
    (msg,) = list(md)
    raw = files[0].read_bytes()
    # trace lines on top, then the message exactly as sent (CRLF stored as LF, dot unstuffed)
    head, _, rest = raw.partition(b"Subject: spine\n")
    assert head.startswith(b"Return-Path: <a@example.org>\nDelivered-To: postmaster@localhost\n")
    assert all(
        line.startswith((b"Return-Path:", b"Delivered-To:", b"Received:", b"  by "))
        for line in head.splitlines()
    )
    assert b"Subject: spine\n" + rest == BODY.replace(b"\r\n", b"\n")
    assert msg["Subject"] == "spine"
    assert msg.get_payload() == "line one\n.leading dot\n\nlast\n"


def test_swaks_to_local_maildir(home: Path) -> None:
    with running_mta(home) as mta:
        res = swaks(
            mta.smtp_port,
            *["--from", "s@example.org", "--to", "postmaster@localhost"],
            *["--header", "Subject: swaks", "--body", "from swaks"],
        )
        assert res.returncode == 0, res.stdout + res.stderr
        files = mta.wait_for_maildir("postmaster")
    msg = email.message_from_bytes(files[0].read_bytes())
    assert msg["Subject"] == "swaks"
    assert msg["Return-Path"] == "<s@example.org>"
    assert "from swaks" in msg.get_payload()


def test_remote_address_reaches_sink_with_envelope(home: Path) -> None:
    with mta_with_sink(home) as (mta, sink):
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=10) as client:
            client.sendmail("a@example.org", ["b@example.net", "c@example.net"], BODY)
        wait_until(lambda: len(sink.messages) >= 1, 20, "the sink to receive the message")
        wait_until(mta.queue_empty, 20, "the queue to empty")
    (got,) = sink.messages
    assert got.mail_from == b"a@example.org"
    assert sorted(got.rcpts) == [b"b@example.net", b"c@example.net"]
    assert got.data.endswith(BODY.split(b"\r\n\r\n", 1)[1])
    assert b"Subject: spine\r\n" in got.data


def test_remote_permanent_failure_bounces_to_sender(home: Path) -> None:
    with mta_with_sink(home) as (mta, _sink):
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=10) as client:
            client.sendmail("postmaster@localhost", ["reject-me@example.net"], BODY)
        files = mta.wait_for_maildir("postmaster")
        wait_until(mta.queue_empty, 20, "the queue to empty")
    bounce = files[0].read_bytes()
    assert b"Subject: failure notice" in bounce
    assert b"Hi. This is the qmail-send program at localhost." in bounce
    assert b"<reject-me@example.net>:\n127.0.0.1 does not like recipient." in bounce
    assert b"Remote host said: 550 no such user" in bounce
    assert b"Return-Path: <>" in bounce
    assert b"--- Below this line is a copy of the message." in bounce


def test_relaying_refused_without_relayclient(home: Path) -> None:
    write_control(home, "tcprules.smtp", ":allow\n")
    with running_mta(home) as mta, smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=10) as c:
        c.ehlo("x")
        c.mail("a@example.org")
        code, text = c.rcpt("someone@elsewhere.example")
        assert code == 553
        assert b"allowed rcpthosts" in text
        assert c.rcpt("postmaster@localhost")[0] == 250


def test_databytes_refuses_big_message(home: Path) -> None:
    write_control(home, "databytes", "1000\n")
    with running_mta(home) as mta, smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=10) as c:
        # declared with SIZE (RFC 1870): refused before the data is sent
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            c.sendmail("a@example.org", ["postmaster@localhost"], b"x" * 5000)
        assert refused.value.smtp_code == 552
        # undeclared: read in full, then refused after the dot, as qmail does
        c.mail("a@example.org")
        c.rcpt("postmaster@localhost")
        code, _ = c.data(b"x" * 5000)
        assert code == 552


def test_queue_writer_down_gives_451(home: Path) -> None:
    with running_mta(home) as mta:
        sock = home / "queue" / "lock" / "queue.sock"
        sock.unlink()  # nobody can reach the writer now
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=10) as c:
            c.ehlo("x")
            c.mail("a@example.org")
            c.rcpt("postmaster@localhost")
            code, text = c.docmd("DATA")
        assert code == 451
        assert b"qqt failure" in text


def test_qmail_queue_program_injects(home: Path) -> None:
    with running_mta(home) as mta:
        code = _run_qmail_queue(
            home,
            b"Subject: via qmail-queue\n\nhello\n",
            b"Fme@example.org\0Tpostmaster@localhost\0\0",
        )
        assert code == 0
        files = mta.wait_for_maildir("postmaster")
    raw = files[0].read_bytes()
    assert b"invoked by uid" in raw
    assert raw.endswith(b"Subject: via qmail-queue\n\nhello\n")


def _run_qmail_queue(home: Path, message: bytes, envelope: bytes) -> int:
    """Run qmail-queue with the message on fd 0 and the envelope on fd 1."""
    mr, mw = os.pipe()
    er, ew = os.pipe()
    os.write(mw, message)
    os.close(mw)
    os.write(ew, envelope)
    os.close(ew)
    proc = subprocess.Popen(
        [str(BIN / "qmail-queue")], stdin=mr, stdout=er, env=environ_with_home(home)
    )
    os.close(mr)
    os.close(er)
    return proc.wait(timeout=30)


def test_qmail_queue_truncated_envelope_exits_54(home: Path) -> None:
    with running_mta(home):
        assert _run_qmail_queue(home, b"x\n", b"Fa@b\0Tc@d\0") == 54
        assert _run_qmail_queue(home, b"x\n", b"Xa@b\0\0") == 91


def test_init_never_overwrites(home: Path) -> None:
    write_control(home, "me", "mx.example.com\n")
    res = pyqmail("init", "--home", str(home))
    assert res.returncode == 0
    assert (home / "control" / "me").read_text() == "mx.example.com\n"


def test_adduser_gets_mail(home: Path) -> None:
    assert pyqmail("adduser", "alice", "--home", str(home)).returncode == 0
    assert pyqmail("adduser", "alice", "--home", str(home)).returncode == 100
    with running_mta(home) as mta:
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=10) as c:
            c.sendmail("a@example.org", ["alice@localhost", "alice-ext@localhost"], BODY)
        files = mta.wait_for_maildir("alice", count=2)
    assert len(files) == 2
    assert {email.message_from_bytes(f.read_bytes())["Delivered-To"] for f in files} == {
        "alice@localhost",
        "alice-ext@localhost",
    }


def test_unknown_local_user_bounces(home: Path) -> None:
    # with the RCPT-time check off (it would refuse with 550), the queue bounces
    write_control(home, "rcptcheck", "0\n")
    with running_mta(home) as mta:
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=10) as c:
            c.sendmail("postmaster@localhost", ["nobody-here@localhost"], BODY)
        files = mta.wait_for_maildir("postmaster")
    text = files[0].read_bytes()
    assert b"<nobody-here@localhost>:\nSorry, no mailbox here by that name. (#5.1.1)" in text


def test_sigterm_stops_within_5s(home: Path) -> None:
    import time

    with running_mta(home) as mta:
        t0 = time.monotonic()
        code = mta.stop(timeout=10)
        assert time.monotonic() - t0 < 5
        assert code == 0
        assert "status: exiting" in mta.log()


def test_deferral_stays_queued_and_sigalrm_retries(home: Path) -> None:
    import signal

    with mta_with_sink(home) as (mta, sink):
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=10) as c:
            c.sendmail("a@example.org", ["defer-me@example.net", "ok@example.net"], BODY)
        wait_until(
            lambda: "deferral: 127.0.0.1 does not like recipient" in mta.log(),
            20,
            "a deferral in the log",
        )
        wait_until(lambda: len(sink.messages) == 1, 20, "the accepted recipient's copy")
        assert not mta.queue_empty()
        # qmail-send's schedule: the next remote attempt is 400 s after queueing,
        # so nothing happens by itself; SIGALRM makes it due now
        mta.proc.send_signal(signal.SIGALRM)
        wait_until(
            lambda: len(re.findall(r"deferral: ", mta.log())) >= 2,
            20,
            "a second attempt after SIGALRM",
        )
        remote = list((home / "queue" / "remote").rglob("*"))
        files = [p for p in remote if p.is_file()]
        assert len(files) == 1
        # the accepted recipient is marked done (D), the deferred one is still T
        assert files[0].read_bytes() == b"Tdefer-me@example.net\0Dok@example.net\0"
    assert [m.rcpts for m in sink.messages] == [[b"ok@example.net"]]


def test_qread_and_qstat_show_a_deferred_message(home: Path) -> None:
    with mta_with_sink(home) as (mta, sink):
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=10) as c:
            c.sendmail("a@example.org", ["defer-1@example.net", "ok@example.net"], BODY)
        wait_until(lambda: "deferral:" in mta.log(), 20, "a deferral")
        wait_until(lambda: len(sink.messages) == 1, 20, "the accepted copy")
        qread_run, qstat_run = run_tool(home, "qmail-qread"), run_tool(home, "qmail-qstat")
    assert qread_run.returncode == 0, qread_run.stderr
    assert qstat_run.returncode == 0, qstat_run.stderr
    qread, qstat = qread_run.stdout, qstat_run.stdout
    head, *rcpts = qread.splitlines()
    assert re.fullmatch(r"\d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT  #\d+  \d+  <a@example.org>", head)
    assert rcpts == ["\tremote\tdefer-1@example.net", "  done\tremote\tok@example.net"]
    assert qstat == "messages in queue: 1\nmessages in queue but not yet preprocessed: 0\n"


def test_bdat_chunking_delivers(home: Path) -> None:
    """RFC 3030: CHUNKING is advertised, so BDAT must work end to end."""
    import socket

    chunk1 = b"Subject: chunked\r\n\r\nfirst "
    chunk2 = b"second\r\n.not stuffed\r\n"
    with running_mta(home) as mta:
        with socket.create_connection(("127.0.0.1", mta.smtp_port), timeout=10) as s:
            f = s.makefile("rb")

            def reply() -> bytes:
                while True:
                    line = f.readline()
                    if line[3:4] != b"-":
                        return line

            assert reply().startswith(b"220")
            s.sendall(b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<postmaster@localhost>\r\n")
            assert [reply()[:3] for _ in range(3)] == [b"250"] * 3
            s.sendall(b"BDAT %d\r\n" % len(chunk1) + chunk1)
            assert reply().startswith(b"250")
            s.sendall(b"BDAT %d LAST\r\n" % len(chunk2) + chunk2)
            assert reply().startswith(b"250 2.0.0 ok")  # ENHANCEDSTATUSCODES
            s.sendall(b"QUIT\r\n")
            assert reply().startswith(b"221")
        files = mta.wait_for_maildir("postmaster")
    assert files[0].read_bytes().endswith(b"Subject: chunked\n\nfirst second\n.not stuffed\n")
