"""The .qmail language end to end: program, mbox and forward lines (qmail-files §5)."""

from __future__ import annotations

import mailbox
import smtplib
from pathlib import Path

from tests.harness import init_home, pyqmail, running_mta, wait_until

BODY = b"Subject: rules\r\n\r\nFrom the start\r\nbody\r\n"


def test_program_mbox_and_forward_lines(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    assert pyqmail("adduser", "alice", "--home", str(home)).returncode == 0
    assert pyqmail("adduser", "bob", "--home", str(home)).returncode == 0
    bob = home / "mailboxes" / "bob"
    (bob / ".qmail").write_text(
        "# bob keeps an mbox, runs a program and forwards to alice\n"
        "./mbox\n"
        '|echo "$SENDER $RECIPIENT $LOCAL $HOST $EXT" > env.txt; cat > piped.txt\n'
        "&alice@localhost\n"
    )
    with running_mta(home) as mta:
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=10) as c:
            c.sendmail("s@example.org", ["bob@localhost"], BODY)
        files = mta.wait_for_maildir("alice")
        wait_until(mta.queue_empty, 20, "the queue to empty")
    # program: the raw message on stdin (no Return-Path/Delivered-To), qmail's environment
    assert (bob / "env.txt").read_text() == "s@example.org bob@localhost bob localhost \n"
    piped = (bob / "piped.txt").read_bytes()
    assert not piped.startswith(b"Return-Path")
    assert piped.endswith(b"Subject: rules\n\nFrom the start\nbody\n")
    # mbox: From_ line, trace lines, >From quoting
    box = mailbox.mbox(str(bob / "mbox"), create=False)
    try:
        (msg,) = list(box)
    finally:
        box.close()
    assert msg["Return-Path"] == "<s@example.org>"
    assert msg["Delivered-To"] == "bob@localhost"
    assert b">From the start\n" in (bob / "mbox").read_bytes()
    # forward: a new message with bob's Delivered-To line, same envelope sender
    fwd = files[0].read_bytes()
    assert fwd.startswith(b"Return-Path: <s@example.org>\nDelivered-To: alice@localhost\n")
    assert b"\nDelivered-To: bob@localhost\n" in fwd


def test_forward_loop_is_bounced_not_repeated(tmp_path: Path) -> None:
    """Delivered-To loop detection (qmail-files §5.8): a forwarding loop ends in a bounce."""
    home = tmp_path / "qmail"
    init_home(home)
    assert pyqmail("adduser", "loop", "--home", str(home)).returncode == 0
    (home / "mailboxes" / "loop" / ".qmail").write_text("&loop@localhost\n")
    with running_mta(home) as mta:
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=10) as c:
            c.sendmail("postmaster@localhost", ["loop@localhost"], BODY)
        files = mta.wait_for_maildir("postmaster")
        wait_until(mta.queue_empty, 20, "the queue to empty")
    assert b"This message is looping: it already has my Delivered-To line. (#5.4.6)" in (
        files[0].read_bytes()
    )
