"""lspawn <-> worker records: a job survives the trip; anything mangled is refused."""

from __future__ import annotations

import pytest

from pyqmail.formats import netstring
from pyqmail.formats.assign import UserMatch
from pyqmail.lspawn.workers import (
    BATCH_MAX,
    MAX_RECORD,
    REPORT_LIMIT,
    Request,
    decode_request,
    decode_results,
    encode_request,
    encode_result,
)


def test_request_round_trip_keeps_every_field_including_odd_bytes() -> None:
    user = UserMatch("joe", 1001, 100, "/home/j\xfco", "-", "list-x")
    req = Request(
        "7/123", b"a\xff@example.org", b"joe-list-x@example.net", "1.Q2R3", True, user, "./M/"
    )
    assert decode_request(encode_request(req)) == req


def test_request_with_a_missing_or_extra_field_is_refused() -> None:
    data = encode_request(
        Request("7/1", b"", b"a@b", "k", False, UserMatch("u", 1, 1, "/h", "", ""), "./Maildir/")
    )
    fields = data.split(b"\0")
    for bad in (fields[:-1], [*fields, b"x"], [*fields[:-1], b"1"], [*fields[:-1], b"1:x"]):
        with pytest.raises(ValueError):
            decode_request(b"\0".join(bad))
    with pytest.raises(ValueError):
        decode_request(data + b"x" * (1 << 16))


def test_a_nul_in_a_field_cannot_shift_the_others() -> None:
    """A NUL byte (from a broken users db entry) is refused when the job is made."""
    user = UserMatch("joe", 1001, 100, "/home/joe\0/evil", "", "")
    with pytest.raises(ValueError):
        encode_request(Request("7/1", b"", b"a@b", "k", False, user, "./Maildir/"))


def test_result_round_trip_and_report_is_cut() -> None:
    assert decode_results(encode_result(0, b"did 1+0+0\n")) == [(0, b"did 1+0+0\n", False)]
    [(code, text, _)] = decode_results(encode_result(100, b"x" * 10000)) or []
    assert code == 100
    assert len(text) == REPORT_LIMIT + 1


def test_a_record_carries_a_whole_groups_results_in_order() -> None:
    record = b"".join(encode_result(code, b"r%d" % code, grouped=True) for code in (0, 111, 100, 0))
    assert decode_results(record) == [
        (0, b"r0", True),
        (111, b"r111", True),
        (100, b"r100", True),
        (0, b"r0", True),
    ]


def test_the_biggest_group_of_reports_fits_in_one_record() -> None:
    record = b"".join(encode_result(111, b"x" * 10000) for _ in range(BATCH_MAX))
    assert len(record) <= MAX_RECORD
    assert len(decode_results(record) or []) == BATCH_MAX


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        netstring.encode(b"0"),
        netstring.encode(b"-1") + netstring.encode(b"") + netstring.encode(b"0"),
        netstring.encode(b"0") + netstring.encode(b""),  # no grouped flag
        netstring.encode(b"0") + netstring.encode(b"") + netstring.encode(b"2"),
        encode_result(0, b"") + netstring.encode(b"0"),  # a second result cut short
        encode_result(0, b"") * (BATCH_MAX + 1),  # more than a batch
    ],
)
def test_a_mangled_record_is_refused_whole(data: bytes) -> None:
    assert decode_results(data) is None
