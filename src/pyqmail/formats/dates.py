"""qmail's date formats (always UTC)."""

from __future__ import annotations

import time

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


_last822: tuple[int, str] = (-1, "")  # every message's Received line: made once a second


def date822(now: float) -> str:
    """``5 Jan 2024 10:00:00 -0000``: no leading zero on the day, literal -0000."""
    global _last822
    second = int(now)
    if _last822[0] == second:
        return _last822[1]
    t = time.gmtime(second)
    text = (
        f"{t.tm_mday} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} -0000"
    )
    _last822 = (second, text)
    return text


def mbox_date(now: float) -> str:
    """``Sat Jan 03 01:05:34 1998`` for mbox From_ lines (zero-padded day)."""
    t = time.gmtime(now)
    return (
        f"{_DAYS[t.tm_wday]} {_MONTHS[t.tm_mon - 1]} {t.tm_mday:02d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {t.tm_year}"
    )


def qread_date(now: float) -> str:
    """``DD Mon YYYY HH:MM:SS GMT`` as qmail-qread prints it."""
    t = time.gmtime(now)
    return (
        f"{t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )
