"""Recipient classification as qmail-send does it (qmail-files §3). Pure."""

from __future__ import annotations

import math

from pyqmail.config import SendConfig
from pyqmail.formats.control import domain_keys
from pyqmail.routing import classify

__all__ = ["classify", "next_retry", "strip_virtual"]

LOCAL_C = 10  # retry schedule constants (qmail-protocols §4)
REMOTE_C = 20


def next_retry(birth: float, pass_start: float, channel: str, unit: float = 1.0) -> float:
    """birth + (floor(sqrt(now - birth)) + c)^2, from the pass's start time.

    ``unit`` is how many real seconds one second of qmail's schedule lasts
    (control/retryunit, in ms): 1.0 is qmail's schedule exactly; tests shrink
    it so that a week of retries fits in seconds without changing its shape.
    """
    c = LOCAL_C if channel == "local" else REMOTE_C
    age = max(0.0, pass_start - birth) / unit
    return birth + unit * (math.floor(math.sqrt(age)) + c) ** 2


def strip_virtual(rcpt: bytes, cfg: SendConfig) -> bytes:
    """Bounce texts show the address without the virtualdomains prefix."""
    local, _, dom = rcpt.rpartition(b"@")
    domain = dom.decode("utf-8", "surrogateescape").lower()
    if domain in cfg.locals:
        return rcpt
    for key in [*domain_keys(domain), ""]:
        prepend = cfg.virtualdomains.get(key)
        if prepend is None:
            continue
        # qmail's stripvdomprepend: the first key found decides, as in
        # classify; an empty prepend ("not virtual") stops the search.
        mark = prepend.encode("utf-8", "surrogateescape") + b"-"
        if prepend and local.startswith(mark):
            return rcpt[len(mark) :]
        return rcpt
    return rcpt
