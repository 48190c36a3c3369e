"""qmail-inject, sendmail and mailq as scripts use them, checked at the Maildir or sink."""

from __future__ import annotations

import email
import email.message
import os
import pwd
import re
import shutil
import smtplib
import socket
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_privsep import reachable_code, system_mta  # noqa: F401
from tests.harness import (
    BIN,
    RunningMta,
    environ_with_home,
    mta_with_sink,
    pyqmail,
    running_mta,
    wait_until,
    write_control,
)


@pytest.fixture
def home(home: Path) -> Path:
    for user in ("alice", "bob"):
        assert pyqmail("adduser", user, "--home", str(home)).returncode == 0
    return home


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A user's login environment: PATH has the programs, no QMAIL* leftovers."""
    env = {k: v for k, v in environ_with_home(home).items() if not k.startswith(("QMAIL", "MAIL"))}
    env["QMAILHOME"] = str(home)
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env["USER"] = "tester"
    env.pop("NAME", None)
    env.update(extra)
    return env


def sh(home: Path, script: str, **extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["sh", "-c", script], env=user_env(home, **extra), capture_output=True, timeout=60
    )


def test_sendmail_t_delivers_to_to_cc_and_bcc_without_the_bcc_line(home: Path) -> None:
    script = (
        "printf 'From: Tester <tester@localhost>\\n"
        "To: alice@localhost\\nCc: Bob <bob@localhost>\\n"
        "Bcc: postmaster@localhost\\nSubject: three ways\\n\\nhello\\n' | sendmail -t"
    )
    with running_mta(home) as mta:
        res = sh(home, script)
        assert res.returncode == 0, res.stderr
        got = {u: mta.wait_for_maildir(u) for u in ("alice", "bob", "postmaster")}
    for user, files in got.items():
        assert len(files) == 1, user
        raw = files[0].read_bytes()
        msg = email.message_from_bytes(raw)
        assert msg["Delivered-To"] == f"{user}@localhost"
        assert msg["Return-Path"] == "<tester@localhost>"
        header = raw.split(b"\n\n")[0]
        assert msg["Bcc"] is None
        assert [ln for ln in header.splitlines() if b"postmaster" in ln] == (
            [b"Delivered-To: postmaster@localhost"] if user == "postmaster" else []
        )
        assert msg["To"] == "alice@localhost"
        assert msg["Cc"] == "Bob <bob@localhost>"
        assert re.fullmatch(r"<\d{14}\.\d+\.qmail@localhost>", msg["Message-ID"] or "")
        assert re.fullmatch(r"\d+ \w{3} \d{4} \d\d:\d\d:\d\d -0000", msg["Date"] or "")
        # the queue writer took the caller's uid from the socket
        assert f"invoked by uid {os.getuid()}" in (msg["Received"] or "")
        assert msg.get_payload() == "hello\n"


def test_sendmail_without_t_uses_only_the_arguments(home: Path) -> None:
    script = "printf 'To: bob@localhost\\nSubject: args\\n\\nx\\n' | sendmail -oi alice"
    with running_mta(home) as mta:
        assert sh(home, script).returncode == 0
        files = mta.wait_for_maildir("alice")
        # the header's To is not a recipient: qmail-inject -a
        wait_until(mta.queue_empty, 20, "the queue to empty")
        assert mta.maildir_files("bob") == []
    msg = email.message_from_bytes(files[0].read_bytes())
    assert msg["To"] == "bob@localhost"
    assert msg["Delivered-To"] == "alice@localhost"  # "alice" got @defaulthost


def test_qmail_inject_f_sets_the_envelope_sender(home: Path) -> None:
    with mta_with_sink(home) as (_mta, sink):
        res = sh(
            home,
            "printf 'To: ignored@example.net\\nSubject: f\\n\\nbody\\n' "
            "| qmail-inject -f list-owner@example.org one@example.net two@example.net",
        )
        assert res.returncode == 0, res.stderr
        wait_until(lambda: len(sink.messages) == 1, 20, "the sink to get the message")
    (got,) = sink.messages
    assert got.mail_from == b"list-owner@example.org"
    assert sorted(got.rcpts) == [b"one@example.net", b"two@example.net"]
    msg = email.message_from_bytes(got.data)
    assert msg["From"] == "tester@localhost"  # -f changes the envelope only
    assert msg["Subject"] == "f"


def test_qmailinject_r_and_m_make_verp_senders(home: Path) -> None:
    with mta_with_sink(home) as (_mta, sink):
        for flags in ("r", "m"):
            res = sh(
                home,
                f"printf 'Subject: {flags}\\n\\nbody\\n' | qmail-inject a@example.net",
                QMAILINJECT=flags,
            )
            assert res.returncode == 0, res.stderr
        wait_until(lambda: len(sink.messages) == 2, 20, "both messages at the sink")
    by_subject = {email.message_from_bytes(m.data)["Subject"]: m for m in sink.messages}
    # r: tester-@localhost-@[] expanded per recipient by send (qmail-protocols §6)
    assert by_subject["r"].mail_from == b"tester-a=example.net@localhost"
    # m: -TIME.PID after the user
    assert re.fullmatch(rb"tester-\d+\.\d+@localhost", by_subject["m"].mail_from)


def test_sendmail_f_and_F_shape_the_from_line(home: Path) -> None:
    with running_mta(home) as mta:
        assert sh(home, "echo hi | sendmail -F 'Jo Tester' alice").returncode == 0
        # netqmail: -f also sets QMAILUSER/QMAILHOST and drops the name
        assert sh(home, "echo hi | sendmail -F Ignored -f jo@example.org alice").returncode == 0
        files = mta.wait_for_maildir("alice", count=2)
    msgs = [email.message_from_bytes(f.read_bytes()) for f in files]
    froms = sorted((m["From"], m["Return-Path"]) for m in msgs)
    assert froms == [
        ('"Jo Tester" <tester@localhost>', "<tester@localhost>"),
        ("jo@example.org", "<jo@example.org>"),
    ]


def test_sendmail_accepts_qmails_ignored_options(home: Path) -> None:
    with running_mta(home) as mta:
        res = sh(
            home,
            "echo hi | sendmail -oi -odb -oem -i -v -x -m -B 8BITMIME -p esmtp -e q -Ejunk "
            "-J -bm alice",
        )
        assert res.returncode == 0, res.stderr
        mta.wait_for_maildir("alice")
    res = sh(home, "echo hi | sendmail -q alice")
    assert res.returncode == 100
    assert b"usage" in res.stderr
    assert sh(home, "echo hi | sendmail -bz alice").returncode == 100


class _PipeSMTP(smtplib.SMTP):
    """smtplib over a socketpair whose other end is a program's stdin/stdout."""

    def __init__(self, sock: socket.socket) -> None:
        self._pipe_sock = sock
        super().__init__(timeout=30)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        return self._pipe_sock


def test_sendmail_bs_speaks_smtp_on_stdin_stdout(home: Path) -> None:
    # -bs sets DATABYTES=0, which lifts control/databytes (qmail's sendmail.c)
    write_control(home, "databytes", "50\n")
    with running_mta(home) as mta:
        ours, theirs = socket.socketpair()
        proc = subprocess.Popen(
            [str(BIN / "sendmail"), "-bs"],
            stdin=theirs.fileno(),
            stdout=theirs.fileno(),
            env=user_env(home),
        )
        theirs.close()
        client = _PipeSMTP(ours)
        try:
            code, _ = client.connect("sendmail-bs", 0)
            assert code == 220
            client.ehlo("me.example")
            # RELAYCLIENT is set: any recipient domain is accepted
            client.mail("tester@localhost")
            assert client.rcpt("x@elsewhere.example")[0] == 250
            client.rset()
            client.sendmail(
                "tester@localhost",
                ["alice@localhost"],
                b"Subject: bs\r\n\r\n" + b"via -bs " * 40 + b"\r\n",
            )
            client.quit()
        finally:
            client.close()  # smtplib's file object keeps the socket open otherwise
            ours.close()
            assert proc.wait(timeout=30) == 0
        files = mta.wait_for_maildir("alice")
    msg = email.message_from_bytes(files[0].read_bytes())
    assert msg["Subject"] == "bs"
    received = msg.get_all("Received") or []
    assert any("(sendmail-bs@127.0.0.1)" in r and "by localhost with SMTP" in r for r in received)


def test_sendmail_bp_and_mailq_list_the_queue(home: Path) -> None:
    with mta_with_sink(home) as (mta, sink):
        res = sh(home, "echo hi | sendmail -f a@example.org defer-1@example.net")
        assert res.returncode == 0
        wait_until(lambda: "deferral:" in mta.log(), 20, "a deferral")
        link = home / "mailq"
        link.symlink_to(BIN / "sendmail")  # qmail's sendmail called by the name mailq
        outputs = [
            sh(home, cmd).stdout.decode()
            for cmd in ("sendmail -bp", "mailq", "qmail-qread", str(link))
        ]
    head, rcpt = outputs[0].splitlines()
    assert re.fullmatch(r"\d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT  #\d+  \d+  <a@example.org>", head)
    assert rcpt == "\tremote\tdefer-1@example.net"
    assert outputs[0] == outputs[1] == outputs[2] == outputs[3]
    assert sink.messages == []


def test_inject_exit_codes(home: Path) -> None:
    # no queue writer running: temporary
    res = sh(home, "echo hi | qmail-inject alice")
    assert res.returncode == 111
    assert b"qmail-inject: fatal: unable to run qmail-queue" in res.stderr
    # a header line it cannot parse: permanent
    res = sh(home, "printf 'To: \"unclosed\\n\\nx\\n' | qmail-inject")
    assert res.returncode == 100
    assert b"unable to parse this line" in res.stderr
    # the queue refuses for good (an address over 1000 bytes): permanent
    with running_mta(home):
        res = sh(home, f"echo hi | qmail-inject {'a' * 1200}@example.net")
    assert res.returncode == 100
    assert b"qmail-inject: fatal: envelope address too long" in res.stderr
    res = sh(home, "echo hi | qmail-inject -z alice")
    assert res.returncode == 100
    res = sh(home, "echo hi | qmail-inject -f")
    assert res.returncode == 100


def test_datemail_mailsubj_and_predate(home: Path) -> None:
    with running_mta(home) as mta:
        assert sh(home, "echo body | datemail alice", TZ="EST5").returncode == 0
        assert sh(home, "echo text | mailsubj 'the subject' alice@localhost bob").returncode == 0
        files = mta.wait_for_maildir("alice", count=2)
        mta.wait_for_maildir("bob")
    msgs = {email.message_from_bytes(f.read_bytes())["Subject"]: f.read_bytes() for f in files}
    dated = email.message_from_bytes(msgs[None])
    assert (dated["Date"] or "").endswith(" -0500")  # local zone, not GMT
    subj = email.message_from_bytes(msgs["the subject"])
    assert subj["To"] == "alice@localhost, bob@localhost"
    res = sh(home, "echo x | predate cat", TZ="UTC")
    assert re.fullmatch(rb"Date: \d+ \w{3} \d{4} \d\d:\d\d:\d\d \+0000\nx\n", res.stdout), (
        res.stdout
    )
    assert sh(home, "predate").returncode == 100
    assert sh(home, "echo x | predate sh -c 'exit 7'").returncode == 7


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="a system home needs root and useradd (CI runs as root)",
)
def test_ordinary_user_is_recorded_by_uid_on_a_system_home(
    system_mta: RunningMta,  # noqa: F811
) -> None:
    """qmail-queue's Received line names the injecting uid; here it comes from the socket."""
    nobody = pwd.getpwnam("nobody")
    res = subprocess.run(
        [str(BIN / "sendmail"), "-t"],
        input=b"To: postmaster@localhost\nSubject: from nobody\n\nhi\n",
        user=nobody.pw_uid,
        group=nobody.pw_gid,
        extra_groups=[nobody.pw_gid],
        env={"QMAILHOME": str(system_mta.home), "USER": "nobody", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=60,
        check=False,
        cwd="/",
    )
    assert res.returncode == 0, res.stderr

    def mine() -> list[email.message.Message]:
        msgs = [
            email.message_from_bytes(f.read_bytes()) for f in system_mta.maildir_files("postmaster")
        ]
        return [m for m in msgs if m["Subject"] == "from nobody"]

    wait_until(lambda: bool(mine()), 20, "nobody's message")
    (msg,) = mine()
    assert msg["Return-Path"] == "<nobody@localhost>"
    assert f"invoked by uid {nobody.pw_uid})" in (msg["Received"] or "")


def test_qmailqueue_program_gets_message_and_envelope(home: Path, tmp_path: Path) -> None:
    """netqmail: $QMAILQUEUE replaces qmail-queue (message on fd 0, envelope on fd 1)."""
    fake = tmp_path / "fake-qq"
    fake.write_text(f'#!/bin/sh\ncat > {tmp_path}/msg\ncat <&1 > {tmp_path}/env\nexit "$CODE"\n')
    fake.chmod(0o755)
    res = sh(
        home,
        "printf 'To: a@example.net\\nSubject: qq\\n\\nbody\\n' | qmail-inject -f s@example.org",
        QMAILQUEUE=str(fake),
        CODE="0",
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "env").read_bytes() == b"Fs@example.org\0Ta@example.net\0\0"
    msg = (tmp_path / "msg").read_bytes()
    assert msg.startswith(b"Date: ")
    assert msg.endswith(b"To: a@example.net\nSubject: qq\n\nbody\n")
    for code, exit_code, text in (
        ("31", 100, b"mail server permanently rejected message (#5.3.0)"),
        ("71", 111, b"mail server temporarily rejected message (#4.3.0)"),
        ("20", 100, b"qq permanent problem (#5.3.0)"),
    ):
        res = sh(home, "echo hi | qmail-inject a@example.net", QMAILQUEUE=str(fake), CODE=code)
        assert res.returncode == exit_code
        assert b"qmail-inject: fatal: " + text in res.stderr
