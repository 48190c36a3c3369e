"""lspawn <-> worker records: a job survives the trip; anything mangled is refused."""

from __future__ import annotations

import pytest

from pyqmail.formats import netstring
from pyqmail.formats.assign import UserMatch
from pyqmail.local.deliver import EXIT_TEMP
from pyqmail.lspawn.workers import (
    REPORT_LIMIT,
    Request,
    decode_request,
    decode_result,
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
    fields = netstring.decode_all(data, limit=1 << 16, max_items=20)
    for bad in (fields[:-1], [*fields, b"x"]):
        with pytest.raises(ValueError):
            decode_request(b"".join(netstring.encode(f) for f in bad))


def test_result_round_trip_and_report_is_cut() -> None:
    assert decode_result(encode_result(0, b"did 1+0+0\n")) == (0, b"did 1+0+0\n", False)
    assert decode_result(encode_result(0, b"x", grouped=True)) == (0, b"x", True)
    code, text, _ = decode_result(encode_result(100, b"x" * 10000))
    assert code == 100
    assert len(text) == REPORT_LIMIT + 1


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        netstring.encode(b"0"),
        netstring.encode(b"-1") + netstring.encode(b"") + netstring.encode(b"0"),
        netstring.encode(b"0") + netstring.encode(b""),  # no grouped flag
        netstring.encode(b"0") + netstring.encode(b"") + netstring.encode(b"2"),
    ],
)
def test_mangled_result_is_a_temporary_failure(data: bytes) -> None:
    assert decode_result(data) == (EXIT_TEMP, b"qmail-local sent a mangled report.", False)
