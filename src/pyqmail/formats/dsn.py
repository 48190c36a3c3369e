"""RFC 3464 delivery status notifications, built from qmail's failure reports. Pure.

The same failures that make a QSBMF bounce make a ``multipart/report``
(RFC 6522) with three parts: the QSBMF text for people, a
``message/delivery-status`` part for programs, and the original message.
Enhanced status codes (RFC 3463) come from the report itself: the remote's
``Remote host said: 550 5.1.1 ...`` reply, else qmail's ``(#5.1.1)``, else
the basic reply code's class (``5.0.0``); an expired message with no code
gets ``4.4.7`` (delivery time expired).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from pyqmail.formats.dates import date822
from pyqmail.formats.qsbmf import GIVE_UP, Failure, bounce_text, returned_original

MAX_FIELD_CHARS = 900  # a header field that stays under RFC 5322's 998-byte line limit
_REMOTE_SAID = re.compile(rb"^Remote host said: ([2-5][0-9][0-9])([ -].*)?$", re.M)
_ENHANCED = re.compile(rb"\A[ -]([245])\.([0-9]{1,3})\.([0-9]{1,3})(?=\s|\Z)")
_HCMSSC = re.compile(rb"\(#([245])\.([0-9]{1,3})\.([0-9]{1,3})\)")


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    status: str  # RFC 3463 code, e.g. "5.1.1"
    diagnostic: str  # Diagnostic-Code value, e.g. "smtp; 550 5.1.1 no such user"
    remote_mta: str | None  # the IP the report names, when the remote replied


def _field_text(raw: bytes) -> str:
    """Printable ASCII on one line, bounded: safe as a header field value."""
    text = raw.decode("utf-8", "replace")
    out = "".join(ch if " " <= ch <= "~" else ("/" if ch == "\n" else "?") for ch in text)
    return out.strip(" /")[:MAX_FIELD_CHARS]


def _remote_ip(report: bytes) -> str | None:
    for token in report.split(b"\n", 1)[0].split():
        try:
            return str(ipaddress.ip_address(token.rstrip(b".").decode("ascii")))
        except (ValueError, UnicodeDecodeError):
            continue
    return None


def recipient_status(report: bytes) -> RecipientStatus:
    """Status, Diagnostic-Code and Remote-MTA for one qmail failure report."""
    expired = GIVE_UP in report
    said = _REMOTE_SAID.search(report)
    if said is not None:
        basic, rest = said.group(1), said.group(2) or b""
        enhanced = _ENHANCED.match(rest)
        if enhanced is not None and enhanced.group(1) == basic[:1]:
            status = b".".join(enhanced.groups()).decode()
        else:
            status = f"{basic[:1].decode()}.0.0"
        diagnostic = "smtp; " + _field_text(basic + rest)
        return RecipientStatus(status, diagnostic, _remote_ip(report))
    code = _HCMSSC.search(report)
    if code is not None:
        status = b".".join(code.groups()).decode()
    else:
        status = "4.4.7" if expired else "5.0.0"
    return RecipientStatus(status, "x-qmail; " + _field_text(report), None)


def _boundary(*parts: bytes) -> str:
    # here, for bounces only: hashlib loads OpenSSL, ~1.5 MB in every send process
    import hashlib

    seed = hashlib.sha256(b"\0".join(parts)).hexdigest()
    n = 0
    while True:
        candidate = f"=_pyqmail_{seed[:24]}_{n}"
        if not any(candidate.encode() in p for p in parts):
            return candidate
        n += 1


def format_dsn(
    *,
    now: float,
    reporting_mta: bytes,
    bouncefrom: bytes,
    bouncehost: bytes,
    to: bytes,
    failures: list[Failure],
    original_sender: bytes,
    original: bytes,
    arrival: float,
    double: bool,
    max_bytes: int = 0,
) -> bytes:
    """A ``multipart/report; report-type=delivery-status`` bounce (RFC 3464, RFC 6522).

    ``original`` is the queued message (LF line ends, as stored); it is
    returned as ``message/rfc822`` with qmail's Return-Path on top, whole or
    cut to ``max_bytes`` (control/bouncemaxbytes) with a note in the text part.
    """
    cut = returned_original(original_sender, original, max_bytes)
    human = bounce_text(bouncehost, failures, double=double, note=cut.note)
    blocks = [
        b"Reporting-MTA: dns; " + reporting_mta + b"\n"
        b"Arrival-Date: " + date822(arrival).encode() + b"\n"
    ]
    for f in failures:
        st = recipient_status(f.report)
        block = (
            b"Final-Recipient: rfc822; " + _field_text(f.recipient).encode() + b"\n"
            b"Action: failed\n"
            b"Status: " + st.status.encode() + b"\n"
        )
        if st.remote_mta:
            block += b"Remote-MTA: dns; " + st.remote_mta.encode() + b"\n"
        block += b"Diagnostic-Code: " + st.diagnostic.encode() + b"\n"
        blocks.append(block)
    status_part = b"\n".join(blocks)
    returned = cut.text
    b = _boundary(human, status_part, returned, b"%f" % now).encode()
    eight_bit = any(c > 127 for c in returned)
    human_cte = b"8bit" if any(c > 127 for c in human) else b"7bit"
    return (
        b"Date: " + date822(now).encode() + b"\n"
        b"From: " + bouncefrom + b"@" + bouncehost + b"\n"
        b"To: " + to + b"\n"
        b"Subject: failure notice\n"
        b"MIME-Version: 1.0\n"
        b'Content-Type: multipart/report; report-type=delivery-status;\n\tboundary="' + b + b'"\n'
        b"\n"
        b"This is a MIME-formatted delivery status notification (RFC 3464).\n"
        b"\n--" + b + b"\n"
        b"Content-Type: text/plain; charset=utf-8\n"
        b"Content-Transfer-Encoding: " + human_cte + b"\n\n" + human + b"\n--" + b + b"\n"
        b"Content-Type: message/delivery-status\n\n" + status_part + b"\n--" + b + b"\n"
        b"Content-Type: message/rfc822\n"
        b"Content-Transfer-Encoding: "
        + (b"8bit" if eight_bit else b"7bit")
        + b"\n\n"
        + returned
        + (b"" if returned.endswith(b"\n") else b"\n")
        + b"\n--"
        + b
        + b"--\n"
    )
