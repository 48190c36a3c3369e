"""qmail-send's bounce message, QSBMF (qmail-protocols §5)."""

from __future__ import annotations

from dataclasses import dataclass

from pyqmail.formats.dates import date822


@dataclass(frozen=True, slots=True)
class Failure:
    recipient: bytes
    report: bytes


def failure_paragraph(f: Failure) -> bytes:
    """``<rcpt>:`` + report; blank lines inside become ``/``; one blank line after."""
    text = f.report if f.report.endswith(b"\n") else f.report + b"\n"
    lines = [ln or b"/" for ln in text[:-1].split(b"\n")]
    rcpt = f.recipient.replace(b"\n", b"_")
    return b"<" + rcpt + b">:\n" + b"\n".join(lines) + b"\n\n"


GIVE_UP = b"I'm not going to try again; this message has been in the queue too long."


def bounce_text(bouncehost: bytes, failures: list[Failure], *, double: bool) -> bytes:
    """The human part: ``Hi. This is the qmail-send program...`` and the failure paragraphs."""
    head = b"Hi. This is the qmail-send program at " + bouncehost + b".\n"
    if double:
        head += b"I tried to deliver a bounce message to this address, but the bounce bounced!\n\n"
    else:
        head += (
            b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
            b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        )
    return head + b"".join(failure_paragraph(f) for f in failures)


def format_bounce(
    *,
    now: float,
    bouncefrom: bytes,
    bouncehost: bytes,
    to: bytes,
    failures: list[Failure],
    original_sender: bytes,
    original: bytes,
    double: bool,
) -> bytes:
    head = (
        b"Date: " + date822(now).encode() + b"\n"
        b"From: " + bouncefrom + b"@" + bouncehost + b"\n"
        b"To: " + to + b"\n"
        b"Subject: failure notice\n\n"
    )
    if double:
        brk = b"--- Below this line is the original bounce.\n\n"
    else:
        brk = b"--- Below this line is a copy of the message.\n\n"
    body = bounce_text(bouncehost, failures, double=double)
    return head + body + brk + b"Return-Path: <" + original_sender + b">\n" + original


def format_bounce_record(f: Failure) -> bytes:
    """One failure as stored in queue/bounce/N: two netstrings, recipient and report."""
    from pyqmail.formats.netstring import encode

    return encode(f.recipient) + encode(f.report)


def parse_bounce_file(data: bytes) -> list[Failure]:
    """Every complete record of queue/bounce/N; a record torn by a crash is dropped."""
    from pyqmail.formats.netstring import NetstringError, decode_one

    out: list[Failure] = []
    while data:
        try:
            first = decode_one(data, limit=1 << 20)
            if first is None:
                break
            second = decode_one(first[1], limit=1 << 20)
        except NetstringError:
            break
        if second is None:
            break
        out.append(Failure(first[0], second[0]))
        data = second[1]
    return out
