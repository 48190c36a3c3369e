"""Address helpers shared by smtpd, send and local delivery."""

from __future__ import annotations


def split_at_last_at(addr: bytes) -> tuple[bytes, bytes | None]:
    """(local, domain) split at the last ``@``; domain None when there is none."""
    at = addr.rfind(b"@")
    if at < 0:
        return addr, None
    return addr[:at], addr[at + 1 :]


def domain_of(addr: bytes) -> str:
    """Lowercased text after the last ``@`` ("" when none)."""
    at = addr.rfind(b"@")
    if at < 0:
        return ""
    return addr[at + 1 :].decode("utf-8", "surrogateescape").lower()


def verp_sender(sender: bytes, recipient: bytes) -> bytes:
    """qmail-send's VERP: ``p-@h-@[]`` + ``r@rh`` -> ``p-r=rh@h`` (protocols §6)."""
    if not sender.endswith(b"-@[]"):
        return sender
    inner = sender[:-3]  # "p-@h-"
    at = inner.rfind(b"@")
    rat = recipient.rfind(b"@")
    if at < 0 or rat < 0:
        return sender
    prefix, host = inner[:at], inner[at + 1 : -1]
    return prefix + recipient[:rat] + b"=" + recipient[rat + 1 :] + b"@" + host


def strip_verp(sender: bytes) -> bytes:
    """Bounce recipient for a VERP sender: ``list-@host-@[]`` -> ``list-@host``."""
    if sender.endswith(b"-@[]"):
        return sender[:-4]
    return sender
