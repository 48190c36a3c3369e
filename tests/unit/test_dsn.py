"""formats.dsn: RFC 3464 reports built from qmail failure texts, parsed back
with the email package; enhanced status codes (RFC 3463) from the report."""

from __future__ import annotations

import email
import email.message

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyqmail.formats.dsn import format_dsn, recipient_status
from pyqmail.formats.qsbmf import GIVE_UP, Failure
from tests.harness import mime_parts

REMOTE_550 = (
    b"192.0.2.25 does not like recipient.\n"
    b"Remote host said: 550 5.1.1 <nobody@example.net>: user unknown\n"
    b"Giving up on 192.0.2.25.\n"
)


@pytest.mark.parametrize(
    ("report", "status", "diagnostic", "mta"),
    [
        (REMOTE_550, "5.1.1", "smtp; 550 5.1.1 <nobody@example.net>: user unknown", "192.0.2.25"),
        (
            b"192.0.2.25 does not like recipient.\nRemote host said: 550 no such user\n",
            "5.0.0",
            "smtp; 550 no such user",
            "192.0.2.25",
        ),
        (  # an enhanced code of another class than the reply is not believed
            b"Connected to 192.0.2.1 but sender was rejected.\nRemote host said: 553 4.1.8 x\n",
            "5.0.0",
            "smtp; 553 4.1.8 x",
            "192.0.2.1",
        ),
        (
            b"Sorry, no mailbox here by that name. (#5.1.1)\n",
            "5.1.1",
            "x-qmail; Sorry, no mailbox here by that name. (#5.1.1)",
            None,
        ),
        (
            b"Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)\n" + GIVE_UP,
            "4.4.1",
            "x-qmail; Sorry, I wasn't able to establish an SMTP connection. (#4.4.1)/"
            + GIVE_UP.decode(),
            None,
        ),
        (b"odd trouble\n" + GIVE_UP, "4.4.7", "x-qmail; odd trouble/" + GIVE_UP.decode(), None),
        (b"unknown trouble", "5.0.0", "x-qmail; unknown trouble", None),
    ],
)
def test_recipient_status(report: bytes, status: str, diagnostic: str, mta: str | None) -> None:
    got = recipient_status(report)
    assert (got.status, got.diagnostic, got.remote_mta) == (status, diagnostic, mta)


def _dsn(failures: list[Failure], original: bytes, double: bool = False) -> bytes:
    return format_dsn(
        now=1_700_000_000.0,
        reporting_mta=b"mx.example.net",
        bouncefrom=b"MAILER-DAEMON",
        bouncehost=b"mx.example.net",
        to=b"alice@example.org",
        failures=failures,
        original_sender=b"alice@example.org",
        original=original,
        arrival=1_699_999_000.0,
        double=double,
    )


def test_dsn_parses_back_with_every_field() -> None:
    original = b"Received: (qmail 1 invoked by uid 0); x\nSubject: lunch\n\nNoon?\n"
    raw = _dsn(
        [
            Failure(b"nobody@example.net", REMOTE_550),
            Failure(b"bob@mx.example.net", b"Sorry, no mailbox here by that name. (#5.1.1)\n"),
        ],
        original,
    )
    msg = email.message_from_bytes(raw)
    assert msg["From"] == "MAILER-DAEMON@mx.example.net"
    assert msg["To"] == "alice@example.org"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert not msg.defects
    human, status, returned = mime_parts(msg)
    assert isinstance(human, email.message.Message)
    assert isinstance(status, email.message.Message)
    assert isinstance(returned, email.message.Message)
    text = human.get_payload(decode=True)
    assert isinstance(text, bytes)
    assert text.startswith(b"Hi. This is the qmail-send program at mx.example.net.\n")
    assert b"<nobody@example.net>:\n192.0.2.25 does not like recipient." in text
    per_msg, first, second = mime_parts(status)
    assert per_msg["Reporting-MTA"] == "dns; mx.example.net"
    assert per_msg["Arrival-Date"] == "14 Nov 2023 21:56:40 -0000"
    assert first["Final-Recipient"] == "rfc822; nobody@example.net"
    assert first["Action"] == "failed"
    assert first["Status"] == "5.1.1"
    assert first["Remote-MTA"] == "dns; 192.0.2.25"
    assert first["Diagnostic-Code"] == "smtp; 550 5.1.1 <nobody@example.net>: user unknown"
    assert second["Final-Recipient"] == "rfc822; bob@mx.example.net"
    assert second["Remote-MTA"] is None
    assert returned.get_content_type() == "message/rfc822"
    (inner,) = mime_parts(returned)
    assert isinstance(inner, email.message.Message)
    assert inner["Return-Path"] == "<alice@example.org>"
    assert inner["Subject"] == "lunch"
    assert inner.get_payload() == "Noon?\n"


def test_double_bounce_dsn_keeps_qmail_wording() -> None:
    msg = email.message_from_bytes(_dsn([Failure(b"a@b", b"x (#5.0.0)")], b"S: x\n\n", True))
    human = mime_parts(msg)[0]
    assert b"but the bounce bounced!" in human.get_payload(decode=True)


def test_eight_bit_original_is_declared() -> None:
    raw = _dsn([Failure(b"a@b", b"x")], "Subject: caf\u00e9\n\n\u00e9t\u00e9\n".encode())
    assert b"Content-Type: message/rfc822\nContent-Transfer-Encoding: 8bit\n" in raw


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_any_report_and_original_give_one_well_formed_report(report: bytes, orig: bytes) -> None:
    """Whatever the remote said and whatever was queued: one header-safe status
    block per recipient, and a boundary that occurs nowhere in the content."""
    raw = _dsn([Failure(b"x@y", report)], orig)
    msg = email.message_from_bytes(raw)
    boundary = msg.get_boundary()
    assert boundary is not None
    assert raw.count(b"--" + boundary.encode()) == 4  # three parts and the close
    status = mime_parts(msg)[1]
    per_rcpt = mime_parts(status)[1]
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"][0] in "45"
    assert "\n" not in per_rcpt["Diagnostic-Code"]


def test_bouncemaxbytes_cuts_the_returned_message_and_says_so() -> None:
    original = b"Subject: big\nX-Pad: 1\n\n" + b"line of the body\n" * 1000
    raw = format_dsn(
        now=1_700_000_000.0,
        reporting_mta=b"mx.example.net",
        bouncefrom=b"MAILER-DAEMON",
        bouncehost=b"mx.example.net",
        to=b"alice@example.org",
        failures=[Failure(b"a@b", b"Sorry. (#5.1.1)\n")],
        original_sender=b"alice@example.org",
        original=original,
        arrival=1_699_999_000.0,
        double=False,
        max_bytes=100,
    )
    assert len(raw) < 3000
    msg = email.message_from_bytes(raw)
    assert not msg.defects
    human, status, returned = mime_parts(msg)
    text = human.get_payload(decode=True)
    assert isinstance(text, bytes)
    assert b"The message was %d bytes; only its first 91 are returned" % len(original) in text
    assert mime_parts(status)[1]["Status"] == "5.1.1"
    assert returned.get_content_type() == "message/rfc822"
    (inner,) = mime_parts(returned)
    assert isinstance(inner, email.message.Message)
    assert inner["Subject"] == "big"
    assert inner["Return-Path"] == "<alice@example.org>"
    assert inner.get_payload() == "line of the body\n" * 4  # 23 + 4*17 = 91 bytes kept


def test_bouncemaxbytes_zero_returns_everything() -> None:
    original = b"Subject: big\n\n" + b"x" * 5000 + b"\n"
    raw = _dsn([Failure(b"a@b", b"x")], original)
    assert b"only its first" not in raw
    assert b"x" * 5000 + b"\n" in raw
