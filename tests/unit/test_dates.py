"""formats.dates: qmail's date formats, always UTC (qmail-protocols §1, qmail-files §5.6)."""

from __future__ import annotations

import calendar

import pytest

from pyqmail.formats.dates import date822, mbox_date, qread_date

JAN_5_2024 = calendar.timegm((2024, 1, 5, 10, 0, 0))
JAN_3_1998 = calendar.timegm((1998, 1, 3, 1, 5, 34))
MAR_12_2024 = calendar.timegm((2024, 3, 12, 8, 15, 2))


def test_date822_has_no_leading_zero_on_the_day() -> None:
    """qmail-protocols §1: ``5 Jan 2024 10:00:00 -0000`` (day unpadded, literal -0000)."""
    assert date822(JAN_5_2024) == "5 Jan 2024 10:00:00 -0000"


def test_date822_matches_the_bounce_example() -> None:
    """qmail-protocols §5.3 example Date line."""
    assert date822(MAR_12_2024) == "12 Mar 2024 08:15:02 -0000"


def test_date822_drops_fractions() -> None:
    assert date822(JAN_5_2024 + 0.999) == "5 Jan 2024 10:00:00 -0000"


def test_mbox_date_is_zero_padded() -> None:
    """qmail-files §5.6: UFLINE date ``Sat Jan 03 01:05:34 1998`` in GMT."""
    assert mbox_date(JAN_3_1998) == "Sat Jan 03 01:05:34 1998"


@pytest.mark.parametrize(
    ("when", "weekday"),
    [((2024, 1, 1), "Mon"), ((2024, 1, 6), "Sat"), ((2024, 1, 7), "Sun"), ((2000, 2, 29), "Tue")],
)
def test_mbox_date_weekday(when: tuple[int, int, int], weekday: str) -> None:
    t = calendar.timegm((*when, 0, 0, 0))
    assert mbox_date(t).startswith(weekday + " ")


def test_qread_date_is_padded_with_gmt() -> None:
    assert qread_date(JAN_5_2024) == "05 Jan 2024 10:00:00 GMT"
