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


@dataclass(frozen=True, slots=True)
class Returned:
    """What a bounce returns of the original: QSBMF and DSN take it from here."""

    text: bytes  # qmail's Return-Path line, then the original (cut, if over the cap)
    note: bytes  # b"" when whole; else a paragraph saying what was cut


def returned_original(sender: bytes, original: bytes, max_bytes: int = 0) -> Returned:
    """The original behind its Return-Path line, cut to control/bouncemaxbytes.

    ``max_bytes`` 0 returns it whole, as qmail does. Otherwise at most that
    many bytes of the original are kept, ending at the last whole line that
    fits (a cut inside a line could split a character or a header), or at
    the byte limit when not even one line fits.
    """
    head = b"Return-Path: <" + sender + b">\n"
    if max_bytes <= 0 or len(original) <= max_bytes:
        return Returned(head + original, b"")
    kept = original[:max_bytes]
    line_end = kept.rfind(b"\n")
    if line_end >= 0:
        kept = kept[: line_end + 1]
    note = b"The message was %d bytes; only its first %d are returned (bouncemaxbytes %d).\n\n" % (
        len(original),
        len(kept),
        max_bytes,
    )
    return Returned(head + kept, note)


def bounce_text(
    bouncehost: bytes, failures: list[Failure], *, double: bool, note: bytes = b""
) -> bytes:
    """The human part: ``Hi. This is the qmail-send program...``, the failure
    paragraphs, then the note of a cut original if any."""
    head = b"Hi. This is the qmail-send program at " + bouncehost + b".\n"
    if double:
        head += b"I tried to deliver a bounce message to this address, but the bounce bounced!\n\n"
    else:
        head += (
            b"I'm afraid I wasn't able to deliver your message to the following addresses.\n"
            b"This is a permanent error; I've given up. Sorry it didn't work out.\n\n"
        )
    return head + b"".join(failure_paragraph(f) for f in failures) + note


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
    max_bytes: int = 0,
) -> bytes:
    returned = returned_original(original_sender, original, max_bytes)
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
    body = bounce_text(bouncehost, failures, double=double, note=returned.note)
    return head + body + brk + returned.text


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
