"""ipc.control_proto: send's operator requests are parsed strictly."""

from __future__ import annotations

import pytest

from pyqmail.formats.netstring import decode_one
from pyqmail.ipc.control_proto import format_request, parse_request


@pytest.mark.parametrize(
    ("command", "msg_id"),
    [("retry", None), ("retry", 7), ("hold", 123), ("release", 1), ("delete", 9), ("when", 2)],
)
def test_round_trip(command: str, msg_id: int | None) -> None:
    got = decode_one(format_request(command, msg_id), limit=200)
    assert got is not None
    assert parse_request(got[0]) == (command.encode(), msg_id)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"QCT1",
        b"QCT2\0retry",
        b"QCT1\0rm\0001",
        b"QCT1\0hold\0-1",
        b"QCT1\0hold\0" + b"9" * 21,
        b"QCT1\0hold\0001\0extra",
    ],
)
def test_garbage_is_refused_with_a_reason(payload: bytes) -> None:
    assert isinstance(parse_request(payload), str)
