"""Which bounce a finished message gets, to whom, and in which format (qmail-protocols §5).

Pure: the scheduler hands in the sender, the failures and the original.
  sender ``#@[]``        -> nothing (triple bounce, dropped as qmail does)
  sender empty            -> double bounce from ``#@[]`` to doublebounceto@doublebouncehost,
                             or nothing when control/doublebounceto starts with ``@``
                             (netqmail's switch for dropping double bounces)
  anything else           -> bounce from ``<>`` to the sender, a VERP marker stripped
control/bounceformat picks QSBMF (``qsbmf``, the default) or RFC 3464 (``dsn``);
control/bouncemaxbytes (0, the default: no cut) caps the original they return.
"""

from __future__ import annotations

from pyqmail.config import SendConfig
from pyqmail.formats.address import strip_verp
from pyqmail.formats.dsn import format_dsn
from pyqmail.formats.envelope import Envelope
from pyqmail.formats.qsbmf import Failure, format_bounce

DOUBLE_BOUNCE_SENDER = b"#@[]"


def build_bounce(
    cfg: SendConfig,
    *,
    sender: bytes,
    birth: float,
    failures: list[Failure],
    original: bytes,
    now: float,
) -> tuple[bytes, Envelope] | None:
    """(message, envelope) of the bounce, or None when it is to be dropped."""
    if sender == DOUBLE_BOUNCE_SENDER:
        return None
    double = sender == b""
    if double and cfg.doublebounceto.startswith("@"):
        return None
    to = (
        f"{cfg.doublebounceto}@{cfg.doublebouncehost}".encode("utf-8", "surrogateescape")
        if double
        else strip_verp(sender)
    )
    bouncefrom = cfg.bouncefrom.encode("utf-8", "surrogateescape")
    bouncehost = cfg.bouncehost.encode("utf-8", "surrogateescape")
    if cfg.bounceformat == "dsn":
        text = format_dsn(
            now=now,
            reporting_mta=(cfg.me or cfg.bouncehost).encode("utf-8", "surrogateescape"),
            bouncefrom=bouncefrom,
            bouncehost=bouncehost,
            to=to,
            failures=failures,
            original_sender=sender,
            original=original,
            arrival=birth,
            double=double,
            max_bytes=cfg.bouncemaxbytes,
        )
    else:
        text = format_bounce(
            now=now,
            bouncefrom=bouncefrom,
            bouncehost=bouncehost,
            to=to,
            failures=failures,
            original_sender=sender,
            original=original,
            double=double,
            max_bytes=cfg.bouncemaxbytes,
        )
    return text, Envelope(DOUBLE_BOUNCE_SENDER if double else b"", (to,))
