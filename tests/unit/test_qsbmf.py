"""formats.qsbmf: qmail-send's bounce message (qmail-protocols §5)."""

from __future__ import annotations

import calendar

from hypothesis import given, settings
from hypothesis import strategies as st

from pyqmail.formats.qsbmf import (
    Failure,
    failure_paragraph,
    format_bounce,
    format_bounce_record,
    parse_bounce_file,
)

# The composed example of qmail-protocols §5.3, byte for byte.
EXAMPLE = b"""\
Date: 12 Mar 2024 08:15:02 -0000
From: MAILER-DAEMON@mx.example.net
To: alice@example.org
Subject: failure notice

Hi. This is the qmail-send program at mx.example.net.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<bob@example.net>:
Sorry, no mailbox here by that name. (#5.1.1)

<carol@example.com>:
203.0.113.7 does not like recipient.
Remote host said: 550 No such user here
Giving up on 203.0.113.7.

--- Below this line is a copy of the message.

Return-Path: <alice@example.org>
Received: (qmail 3141 invoked from network); 12 Mar 2024 08:14:59 -0000
Received: from client.example.org (198.51.100.4)
  by mx.example.net with SMTP; 12 Mar 2024 08:14:59 -0000
Subject: lunch

Noon?
"""

ORIGINAL = b"""\
Received: (qmail 3141 invoked from network); 12 Mar 2024 08:14:59 -0000
Received: from client.example.org (198.51.100.4)
  by mx.example.net with SMTP; 12 Mar 2024 08:14:59 -0000
Subject: lunch

Noon?
"""

NOW = calendar.timegm((2024, 3, 12, 8, 15, 2))
FAILURES = [
    Failure(b"bob@example.net", b"Sorry, no mailbox here by that name. (#5.1.1)\n"),
    # no final newline: qmail-send adds one
    Failure(
        b"carol@example.com",
        b"203.0.113.7 does not like recipient.\n"
        b"Remote host said: 550 No such user here\n"
        b"Giving up on 203.0.113.7.",
    ),
]


def test_single_bounce_matches_the_reference_example() -> None:
    got = format_bounce(
        now=NOW,
        bouncefrom=b"MAILER-DAEMON",
        bouncehost=b"mx.example.net",
        to=b"alice@example.org",
        failures=FAILURES,
        original_sender=b"alice@example.org",
        original=ORIGINAL,
        double=False,
    )
    assert got == EXAMPLE


def test_double_bounce_texts() -> None:
    """§5.2: 'the bounce bounced!' intro + blank line, 'original bounce' break,
    ``Return-Path: <>``."""
    got = format_bounce(
        now=NOW,
        bouncefrom=b"MAILER-DAEMON",
        bouncehost=b"mx.example.net",
        to=b"postmaster@mx.example.net",
        failures=FAILURES[:1],
        original_sender=b"",
        original=b"Subject: x\n\nbody\n",
        double=True,
    )
    assert got == (
        b"Date: 12 Mar 2024 08:15:02 -0000\n"
        b"From: MAILER-DAEMON@mx.example.net\n"
        b"To: postmaster@mx.example.net\n"
        b"Subject: failure notice\n"
        b"\n"
        b"Hi. This is the qmail-send program at mx.example.net.\n"
        b"I tried to deliver a bounce message to this address, but the bounce bounced!\n"
        b"\n"
        b"<bob@example.net>:\n"
        b"Sorry, no mailbox here by that name. (#5.1.1)\n"
        b"\n"
        b"--- Below this line is the original bounce.\n"
        b"\n"
        b"Return-Path: <>\n"
        b"Subject: x\n\nbody\n"
    )
    assert b"I'm afraid" not in got
    assert b"copy of the message" not in got


def test_no_message_id_is_added() -> None:
    """§5.2: qmail-send adds no Message-ID (qmail-queue adds only Received)."""
    assert b"Message-ID" not in EXAMPLE.split(b"\n\n", 1)[0]
    head = format_bounce(
        now=NOW,
        bouncefrom=b"M",
        bouncehost=b"h",
        to=b"t@h",
        failures=[],
        original_sender=b"s@h",
        original=b"",
        double=False,
    ).split(b"\n\n", 1)[0]
    assert b"Message-ID" not in head


def test_paragraph_newline_added_when_missing() -> None:
    """§5.2: the report gets a final newline if it lacks one; then one blank line."""
    assert failure_paragraph(Failure(b"a@b", b"text")) == b"<a@b>:\ntext\n\n"
    assert failure_paragraph(Failure(b"a@b", b"text\n")) == b"<a@b>:\ntext\n\n"


def test_paragraph_blank_line_inside_becomes_slash() -> None:
    """§5.2: an empty line inside the report becomes a line ``/``."""
    report = b"Remote host said:\n\n550 no\n\n\nend\n"
    assert failure_paragraph(Failure(b"a@b", report)) == (
        b"<a@b>:\nRemote host said:\n/\n550 no\n/\n/\nend\n\n"
    )


def test_paragraph_recipient_newlines_become_underscores() -> None:
    assert failure_paragraph(Failure(b"a\nb@c", b"x")).startswith(b"<a_b@c>:\n")


@settings(max_examples=200)
@given(st.binary(max_size=30), st.binary(max_size=200))
def test_paragraph_never_contains_a_blank_line(rcpt: bytes, report: bytes) -> None:
    """§5.3: a paragraph is non-blank lines followed by exactly one blank line, so
    a QSBMF parser can split paragraphs on blank lines."""
    para = failure_paragraph(Failure(rcpt, report))
    assert para.endswith(b"\n\n")
    body = para[:-2]
    assert b"\n\n" not in body
    first, *rest = body.split(b"\n")
    assert first == b"<" + rcpt.replace(b"\n", b"_") + b">:"
    want = report if report.endswith(b"\n") else report + b"\n"
    assert rest == [ln or b"/" for ln in want[:-1].split(b"\n")]


def test_bounce_file_record_is_two_netstrings() -> None:
    assert format_bounce_record(Failure(b"a@b", b"why\n")) == b"3:a@b,4:why\n,"


@settings(max_examples=200)
@given(
    st.lists(st.builds(Failure, st.binary(max_size=30), st.binary(max_size=100)), max_size=5),
    st.data(),
)
def test_bounce_file_round_trip_with_torn_tail(
    failures: list[Failure], data: st.DataObject
) -> None:
    """queue/bounce/N is appended to; a record torn by a crash is dropped, the
    complete records before it survive."""
    whole = b"".join(format_bounce_record(f) for f in failures)
    assert parse_bounce_file(whole) == failures
    extra = format_bounce_record(data.draw(st.builds(Failure, st.binary(max_size=30))))
    cut = data.draw(st.integers(0, len(extra) - 1))
    assert parse_bounce_file(whole + extra[:cut]) == failures


def test_bounce_file_stops_at_garbage() -> None:
    good = format_bounce_record(Failure(b"a@b", b"x"))
    assert parse_bounce_file(good + b"zz:garbage,") == [Failure(b"a@b", b"x")]
    assert parse_bounce_file(b"") == []


# -- control/bouncemaxbytes: the returned original, cut -----------------------


def _capped(max_bytes: int, original: bytes = ORIGINAL) -> bytes:
    return format_bounce(
        now=NOW,
        bouncefrom=b"MAILER-DAEMON",
        bouncehost=b"mx.example.net",
        to=b"alice@example.org",
        failures=FAILURES,
        original_sender=b"alice@example.org",
        original=original,
        double=False,
        max_bytes=max_bytes,
    )


def test_bouncemaxbytes_zero_or_not_reached_returns_the_whole_message() -> None:
    assert _capped(0) == EXAMPLE
    assert _capped(len(ORIGINAL)) == EXAMPLE


def test_bouncemaxbytes_cuts_at_the_last_whole_line_with_a_note() -> None:
    limit = len(ORIGINAL) - 3  # inside the last line "Noon?\n"
    got = _capped(limit)
    kept = ORIGINAL[: ORIGINAL.rindex(b"\n", 0, limit) + 1]
    assert kept.endswith(b"Subject: lunch\n\n")
    note = b"The message was %d bytes; only its first %d are returned (bouncemaxbytes %d).\n\n" % (
        len(ORIGINAL),
        len(kept),
        limit,
    )
    # the note ends the human part, before the break; QSBMF's layout is kept
    human, _, returned = got.partition(b"--- Below this line is a copy of the message.\n\n")
    assert human.endswith(b"Giving up on 203.0.113.7.\n\n" + note)
    assert returned == b"Return-Path: <alice@example.org>\n" + kept
    assert b"Noon?" not in got


def test_bouncemaxbytes_smaller_than_one_line_cuts_at_the_byte() -> None:
    got = _capped(10)
    assert got.endswith(b"\n\nReturn-Path: <alice@example.org>\n" + ORIGINAL[:10])
    assert b"only its first 10 are returned" in got
