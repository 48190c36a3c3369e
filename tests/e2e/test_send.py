"""qmail-send end to end (issue #5): retries and lifetime, bounces of every kind,
VERP, address rewriting, the queue tools and restart recovery, on a live MTA
routed to a loopback sink."""

from __future__ import annotations

import email
import email.message
import email.utils
import re
import signal
import smtplib
import subprocess
import time
from pathlib import Path

from pyqmail.config import Home
from pyqmail.formats.qsbmf import Failure
from tests.harness import (
    BIN,
    RunningMta,
    mime_parts,
    mta_with_sink,
    pyqmail,
    running_mta,
    running_sink,
    wait_until,
    write_control,
)
from tests.queuefill import write_preprocessed, write_todo

BODY = b"Subject: send test\r\nMessage-ID: <s@test>\r\n\r\nhello\r\n"


def _send(mta: RunningMta, sender: str, rcpts: list[str], body: bytes = BODY) -> None:
    with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=10) as c:
        c.sendmail(sender, rcpts, body)


def _queue(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return pyqmail("queue", *args, "--home", str(home))


def _msg_ids(mta: RunningMta, addr: str) -> list[int]:
    """Ids of the messages send started delivering to addr, in log order."""
    ids = re.findall(rf"starting delivery \d+: msg (\d+) to \w+ {re.escape(addr)}\n", mta.log())
    return [int(i) for i in dict.fromkeys(ids)]


def _attempts(mta: RunningMta, msg_id: int, since: int = 0) -> int:
    """Delivery attempts for msg_id logged after the first `since` bytes of the log."""
    return len(re.findall(rf"starting delivery \d+: msg {msg_id} to ", mta.log()[since:]))


def test_deferral_retried_on_schedule_then_expires_into_a_dsn(home: Path) -> None:
    """qmail-protocols §4: passes on the quadratic schedule (scaled by
    control/retryunit), the pass after queuelifetime turns Z into D with qmail's
    line; control/bounceformat dsn makes the bounce an RFC 3464 report."""
    write_control(home, "retryunit", "1\n")  # one schedule second = 1 ms
    write_control(home, "queuelifetime", "2\n")
    write_control(home, "bounceformat", "dsn\n")
    with mta_with_sink(home) as (mta, _sink):
        _send(mta, "postmaster@localhost", ["defer-late@example.net"])
        files = mta.wait_for_maildir("postmaster", timeout=40)
        wait_until(mta.queue_empty, 20, "the queue to empty")
        log = mta.log()
    assert len(re.findall(r"deferral: 127\.0\.0\.1 does not like recipient", log)) >= 1
    assert "this message has been in the queue too long." in log
    dsn = email.message_from_bytes(files[0].read_bytes())
    assert dsn["Return-Path"] == "<>"
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    human, status, original = mime_parts(dsn)
    assert isinstance(human, email.message.Message)
    assert isinstance(status, email.message.Message)
    assert isinstance(original, email.message.Message)
    text = human.get_payload(decode=True)
    assert isinstance(text, bytes)
    assert b"<defer-late@example.net>:\n127.0.0.1 does not like recipient." in text
    assert b"I'm not going to try again" in text
    assert status.get_content_type() == "message/delivery-status"
    per_msg, per_rcpt = mime_parts(status)
    assert per_msg["Reporting-MTA"] == "dns; localhost"
    assert email.utils.parsedate_to_datetime(per_msg["Arrival-Date"]) is not None
    assert per_rcpt["Final-Recipient"] == "rfc822; defer-late@example.net"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"] == "4.0.0"  # the remote's 451 carried no enhanced code
    assert per_rcpt["Remote-MTA"] == "dns; 127.0.0.1"
    assert per_rcpt["Diagnostic-Code"] == "smtp; 451 try later"
    assert original.get_content_type() == "message/rfc822"
    (inner,) = mime_parts(original)
    assert isinstance(inner, email.message.Message)
    assert inner["Subject"] == "send test"
    assert inner["Return-Path"] == "<postmaster@localhost>"


def test_double_bounce_then_triple_bounce_and_hup(home: Path) -> None:
    """qmail-protocols §5.1: a bounce that bounces goes from #@[] to
    doublebounceto@doublebouncehost (QSBMF); once SIGHUP has pointed
    doublebounceto at a rejecting address the double bounce bounces too and is
    dropped; with doublebounceto '@' a double bounce is dropped at once."""
    with mta_with_sink(home) as (mta, _sink):
        _send(mta, "", ["reject-one@example.net"])
        files = mta.wait_for_maildir("postmaster")
        wait_until(mta.queue_empty, 20, "the queue to empty")
        double = email.message_from_bytes(files[0].read_bytes())
        assert double["Return-Path"] == "<#@[]>"
        assert double["To"] == "postmaster@localhost"
        assert double["Subject"] == "failure notice"
        body = double.get_payload()
        assert isinstance(body, str)
        assert "but the bounce bounced!" in body
        assert "<reject-one@example.net>:\n127.0.0.1 does not like recipient." in body
        assert "--- Below this line is the original bounce.\n\nReturn-Path: <>\n" in body

        write_control(home, "doublebounceto", "reject-pm\n")
        write_control(home, "doublebouncehost", "example.net\n")
        mta.proc.send_signal(signal.SIGHUP)  # the supervisor passes it on to send
        wait_until(lambda: "send: status: reread control files" in mta.log(), 20, "the reread")
        _send(mta, "", ["reject-two@example.net"])
        wait_until(lambda: "triple bounce: discarding bounce/" in mta.log(), 30, "a triple")
        wait_until(mta.queue_empty, 20, "the queue to empty")

        write_control(home, "doublebounceto", "@\n")
        mta.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: mta.log().count("reread control files") >= 2, 20, "the reread")
        _send(mta, "", ["reject-three@example.net"])
        wait_until(lambda: "double bounce: discarding bounce/" in mta.log(), 30, "a drop")
        wait_until(mta.queue_empty, 20, "the queue to empty")
        assert len(mta.maildir_files("postmaster")) == 1


def test_bouncemaxbytes_cuts_the_original_a_live_bounce_returns(home: Path) -> None:
    """control/bouncemaxbytes: the QSBMF bounce of a big message returns only
    its first whole lines under the cap, and says so."""
    write_control(home, "bouncemaxbytes", "600\n")
    big = b"Subject: big one\r\n\r\n" + b"0123456789 padding line\r\n" * 2000
    with mta_with_sink(home) as (mta, _sink):
        _send(mta, "postmaster@localhost", ["reject-big@example.net"], big)
        files = mta.wait_for_maildir("postmaster")
        wait_until(mta.queue_empty, 20, "the queue to empty")
    raw = files[0].read_bytes()
    assert len(raw) < 2500
    bounce = email.message_from_bytes(raw)
    body = bounce.get_payload()
    assert isinstance(body, str)
    assert "<reject-big@example.net>:\n127.0.0.1 does not like recipient." in body
    assert re.search(r"The message was \d+ bytes; only its first \d+ are returned", body)
    returned = body.split("--- Below this line is a copy of the message.\n\n", 1)[1]
    assert returned.startswith("Return-Path: <postmaster@localhost>\nReceived: ")
    assert returned.endswith("\n")  # cut at a line end
    assert 0 < returned.count("0123456789 padding line\n") < 25


def test_concurrency_zero_holds_a_channel_until_sighup_raises_it(home: Path) -> None:
    """qmail-files §2.1: concurrencyremote 0 suspends remote deliveries; SIGHUP
    rereads it and the waiting work goes out, nothing dropped; local mail
    flows meanwhile."""
    write_control(home, "concurrencyremote", "0\n")
    with mta_with_sink(home) as (mta, sink):
        _send(mta, "a@example.org", ["one@example.net", "postmaster@localhost"])
        _send(mta, "a@example.org", ["two@example.net"])
        mta.wait_for_maildir("postmaster")
        assert "to remote" not in mta.log()
        assert sink.messages == []
        write_control(home, "concurrencyremote", "2\n")
        mta.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: len(sink.messages) == 2, 20, "both remote copies")
        wait_until(mta.queue_empty, 20, "the queue to empty")
    assert sorted(r for m in sink.messages for r in m.rcpts) == [
        b"one@example.net",
        b"two@example.net",
    ]


def test_verp_sender_rewritten_per_recipient_at_the_sink(home: Path) -> None:
    """qmail-protocols §6: p-@h-@[] + r@rh -> p-r=rh@h, one transaction per
    recipient; a failure bounces to the marker-stripped p-@h."""
    with running_sink() as sink:
        write_control(home, "smtproutes", f":127.0.0.1:{sink.port}\n")
        with running_mta(home) as mta:
            rcpts = ["b@example.net", "c@example.com", "reject-d@example.net"]
            _send(mta, "list-@lists.example-@[]", rcpts)
            wait_until(lambda: len(sink.messages) >= 3, 30, "two copies and the bounce")
            wait_until(mta.queue_empty, 20, "the queue to empty")
    by_rcpt = {tuple(m.rcpts): m for m in sink.messages}
    assert by_rcpt[(b"b@example.net",)].mail_from == b"list-b=example.net@lists.example"
    assert by_rcpt[(b"c@example.com",)].mail_from == b"list-c=example.com@lists.example"
    bounce = by_rcpt[(b"list-@lists.example",)]
    assert bounce.mail_from == b""
    parsed = email.message_from_bytes(bounce.data)
    text = parsed.get_payload()
    assert isinstance(text, str)
    assert "<reject-d@example.net>:" in text.replace("\r\n", "\n")


def test_virtualdomains_percenthack_envnoathost(home: Path) -> None:
    """qmail-files §3: envnoathost, percenthack, then locals, then virtualdomains
    (user@domain, domain and the ':' catch-all forms)."""
    for user in ("alice", "bob", "carol"):
        assert pyqmail("adduser", user, "--home", str(home)).returncode == 0
    write_control(home, "virtualdomains", "virt.example:alice\nbob@virt.example:bob\n:carol\n")
    write_control(home, "percenthack", "relay.example\n")
    with running_mta(home) as mta:
        _send(
            mta,
            "a@example.org",
            [
                "info@virt.example",  # domain form -> alice-info
                "bob@virt.example",  # user@domain form beats the domain -> bob-bob
                "x@elsewhere.example",  # catch-all -> carol-x@elsewhere.example
                "alice%localhost@relay.example",  # percenthack -> alice@localhost
                "postmaster",  # envnoathost -> postmaster@localhost
            ],
        )
        alice = mta.wait_for_maildir("alice", count=2)
        bob = mta.wait_for_maildir("bob")
        carol = mta.wait_for_maildir("carol")
        mta.wait_for_maildir("postmaster")
        wait_until(mta.queue_empty, 20, "the queue to empty")

    def delivered_to(files: list[Path]) -> set[str]:
        return {str(email.message_from_bytes(f.read_bytes())["Delivered-To"]) for f in files}

    assert delivered_to(alice) == {"alice-info@virt.example", "alice@localhost"}
    assert delivered_to(bob) == {"bob-bob@virt.example"}
    assert delivered_to(carol) == {"carol-x@elsewhere.example"}


def test_queue_tools_hold_release_retry_show_delete(home: Path) -> None:
    """pyqmail queue: every change goes through send's control socket while
    the MTA runs; a held message is skipped by retries until released; delete
    removes a message silently (no bounce) and logs it."""
    with mta_with_sink(home) as (mta, sink):
        _send(mta, "postmaster@localhost", ["defer-a@example.net"])
        wait_until(lambda: bool(_msg_ids(mta, "defer-a@example.net")), 20, "a's attempt")
        (a,) = _msg_ids(mta, "defer-a@example.net")
        wait_until(lambda: "deferral:" in mta.log(), 20, "a's deferral")

        listing = _queue(home, "list")
        assert listing.returncode == 0
        head, rcpt = listing.stdout.splitlines()
        assert re.fullmatch(rf".* GMT  #{a}  \d+  <postmaster@localhost>", head)
        assert rcpt == "\tremote\tdefer-a@example.net"

        res = _queue(home, "hold", str(a))
        assert (res.returncode, res.stdout) == (0, f"message {a} held\n")
        assert _queue(home, "list").stdout.splitlines()[0].endswith(" held")
        res = _queue(home, "retry", str(a))
        assert res.returncode == 100
        assert "is held; release it first" in res.stderr

        # retry everything: b is tried again, held a is not (both were due at once)
        _send(mta, "postmaster@localhost", ["defer-b@example.net"])
        wait_until(lambda: bool(_msg_ids(mta, "defer-b@example.net")), 20, "b's attempt")
        (b,) = _msg_ids(mta, "defer-b@example.net")
        wait_until(lambda: mta.log().count("deferral:") >= 2, 20, "b's deferral")
        assert _queue(home, "retry").returncode == 0
        wait_until(lambda: _attempts(mta, b) >= 2, 20, "b's second attempt")
        assert _attempts(mta, a) == 1

        show = _queue(home, "show", str(a))
        assert show.returncode == 0
        envelope, _, content = show.stdout.partition("\n\n")
        assert "remote: held" in envelope
        assert "Subject: send test\n" in content
        assert content.startswith("Received: ")

        assert _queue(home, "release", str(a)).returncode == 0
        wait_until(lambda: _attempts(mta, a) >= 2, 20, "a's attempt after release")
        wait_until(lambda: mta.log().count("deferral:") >= 4, 20, "both deferred again")
        show = _queue(home, "show", str(a))
        assert "remote: next attempt " in show.stdout

        sink.accept_everything = True  # nothing may reach the sink after delete
        for msg_id in (a, b):
            res = _queue(home, "delete", str(msg_id))
            assert (res.returncode, res.stdout) == (0, f"message {msg_id} deleted\n")
        wait_until(mta.queue_empty, 20, "the deleted messages to go")
        assert f"msg {a} deleted by the operator" in mta.log()
        assert f"end msg {a}" in mta.log()
        assert _queue(home, "delete", str(a)).returncode == 100
        assert _queue(home, "list").stdout == ""
        assert sink.messages == []
        assert mta.maildir_files("postmaster") == []
    res = _queue(home, "hold", str(a))
    assert res.returncode == 111
    assert "send is not running" in res.stderr


def test_restart_resumes_messages_in_every_state(home: Path) -> None:
    """qmail-files §6.2: after a stop, every state resumes: deferred and
    partly delivered (S5), held, queued but not preprocessed (S4), preprocessing
    interrupted (S4 with leftover info/channel files) and finished with the
    bounce not yet sent."""
    q = Home(str(home))
    with running_sink() as sink:
        write_control(home, "smtproutes", f"example.net:127.0.0.1:{sink.port}\n")
        with running_mta(home) as mta:
            _send(mta, "a@example.org", ["defer-1@example.net", "ok-1@example.net"])
            _send(mta, "a@example.org", ["defer-2@example.net"])
            wait_until(lambda: mta.log().count("deferral:") >= 2, 20, "both deferrals")
            (held,) = _msg_ids(mta, "defer-2@example.net")
            assert _queue(home, "hold", str(held)).returncode == 0
        base = int(time.time() * 1000) - 10_000_000
        write_todo(q, base + 1, b"a@example.org", [b"todo-1@example.net"], b"Subject: s4\n\nx\n")
        write_todo(q, base + 2, b"a@example.org", [b"half-2@example.net"], b"Subject: s4b\n\nx\n")
        write_preprocessed(  # a crash between writing info/channels and clean's todo removal
            q, base + 2, b"a@example.org", b"Subject: s4b\n\nx\n", remote=[(b"stale@x", False)]
        )
        write_preprocessed(
            q,
            base + 3,
            b"postmaster@localhost",
            b"Subject: finished\n\nx\n",
            failures=[Failure(b"gone@example.net", b"Sorry, no mailbox here. (#5.1.1)\n")],
        )
        sink.accept_everything = True
        before = len(sink.messages)
        restart = len((home / "log" / "pyqmail.log").read_text(errors="replace"))
        with running_mta(home) as mta:
            # held, partly delivered and finished; the two in todo/ are preprocessed
            wait_until(lambda: "loaded 3 queued message(s)" in mta.log(), 20, "the load")
            assert _queue(home, "list").stdout.count(" held\n") == 1
            assert _queue(home, "retry").returncode == 0  # the deferred are not due for 400 s
            bounce = mta.wait_for_maildir("postmaster")
            wait_until(lambda: len(sink.messages) >= before + 3, 30, "s4, s4b and defer-1")
            assert _attempts(mta, held, restart) == 0
            assert _queue(home, "release", str(held)).returncode == 0
            wait_until(mta.queue_empty, 30, "every message to be delivered")
    got = sorted(r for m in sink.messages[before:] for r in m.rcpts)
    assert got == [
        b"defer-1@example.net",
        b"defer-2@example.net",
        b"half-2@example.net",
        b"todo-1@example.net",
    ]
    text = bounce[0].read_bytes()
    assert b"<gone@example.net>:\nSorry, no mailbox here. (#5.1.1)" in text
    assert not list((home / "queue" / "hold").iterdir())
    qread = subprocess.run(
        [str(BIN / "qmail-qread")],
        capture_output=True,
        text=True,
        env={"QMAILHOME": str(home)},
        timeout=30,
        check=True,
    )
    assert qread.stdout == ""


def test_a_bounce_whose_body_is_gone_still_reaches_the_sender(home: Path) -> None:
    """Its recipients are all done, the bounce record is there, mess/S/N is not:
    the sender gets the failure report without the original, and the queue empties."""
    q = Home(str(home))
    msg_id = int(time.time() * 1000) - 10_000_000
    write_preprocessed(
        q,
        msg_id,
        b"postmaster@localhost",
        b"Subject: lost\n\nx\n",
        remote=[(b"gone@example.net", True)],
        failures=[Failure(b"gone@example.net", b"Sorry, no mailbox here. (#5.1.1)\n")],
    )
    Path(q.split_path("mess", msg_id)).unlink()
    with running_mta(home) as mta:
        bounce = mta.wait_for_maildir("postmaster")
        wait_until(mta.queue_empty, 30, "the message to be finished")
        assert f"mess for msg {msg_id} is missing" in mta.log()
    text = bounce[0].read_bytes()
    assert b"<gone@example.net>:\nSorry, no mailbox here. (#5.1.1)" in text
    assert b"Subject: lost" not in text
