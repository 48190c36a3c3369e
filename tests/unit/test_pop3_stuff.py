"""POP3 multi-line bodies: CRLF, dot-stuffing and TOP (RFC 1939 §3, §7)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pyqmail.proto.pop3.stuff import MAX_PENDING_BYTES, Stuffer, stuff_message

MSG = b"Subject: s\nX: y\n\nline1\n.line2\n..\nline4\n"


def unstuff(wire: bytes) -> bytes:
    """What poplib does with a multi-line answer, back to LF lines."""
    assert wire.endswith(b".\r\n")
    lines = wire[: -len(b".\r\n")].split(b"\r\n")
    assert lines[-1] == b""
    return b"".join((ln[1:] if ln.startswith(b".") else ln) + b"\n" for ln in lines[:-1])


def test_lf_becomes_crlf_and_leading_dots_double() -> None:
    assert stuff_message(MSG) == (
        b"Subject: s\r\nX: y\r\n\r\nline1\r\n..line2\r\n...\r\nline4\r\n.\r\n"
    )


def test_crlf_input_is_not_doubled() -> None:
    assert stuff_message(b"A: b\r\n\r\nbody\r\n") == b"A: b\r\n\r\nbody\r\n.\r\n"


def test_last_line_without_newline_is_completed() -> None:
    assert stuff_message(b"A: b\n\nno newline") == b"A: b\r\n\r\nno newline\r\n.\r\n"
    assert stuff_message(b"") == b".\r\n"


def test_top_sends_header_blank_line_and_n_body_lines() -> None:
    assert stuff_message(MSG, 0) == b"Subject: s\r\nX: y\r\n\r\n.\r\n"
    assert stuff_message(MSG, 2) == b"Subject: s\r\nX: y\r\n\r\nline1\r\n..line2\r\n.\r\n"
    assert stuff_message(MSG, 100) == stuff_message(MSG)


def test_top_stops_reading() -> None:
    s = Stuffer(1)
    s.feed(b"A: b\n\none\n")
    assert s.done
    assert s.feed(b"two\n") == b""


def test_a_huge_line_is_never_buffered_whole() -> None:
    s = Stuffer()
    out = s.feed(b"." + b"x" * (3 * MAX_PENDING_BYTES))
    assert out.startswith(b"..x")
    assert len(s._pending) <= MAX_PENDING_BYTES
    whole = out + s.feed(b"\nnext\n") + s.finish()
    assert whole == stuff_message(b"." + b"x" * (3 * MAX_PENDING_BYTES) + b"\nnext\n")


@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=5))
def test_any_split_gives_the_same_bytes(data: bytes, cuts: list[int]) -> None:
    s = Stuffer()
    out = b""
    prev = 0
    for cut in sorted(cuts):
        out += s.feed(data[prev:cut])
        prev = max(prev, cut)
    out += s.feed(data[prev:]) + s.finish()
    assert out == stuff_message(data)


@given(st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b and b"\r" not in b)))
def test_unstuffing_gives_the_message_back(lines: list[bytes]) -> None:
    data = b"".join(ln + b"\n" for ln in lines)
    assert unstuff(stuff_message(data)) == data
