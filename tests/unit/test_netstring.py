"""formats.netstring: cr.yp.to/proto/netstrings.txt, qmail-protocols §7.1."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyqmail.formats.netstring import NetstringError, decode_all, decode_one, encode

LIMIT = 2048


def test_encode_matches_the_spec_examples() -> None:
    """qmail-protocols §7.1: ``12:hello world!,`` and the empty string ``0:,``."""
    assert encode(b"hello world!") == b"12:hello world!,"
    assert encode(b"") == b"0:,"


@settings(max_examples=200)
@given(st.binary(max_size=LIMIT), st.binary(max_size=64))
def test_round_trip_leaves_the_rest(payload: bytes, rest: bytes) -> None:
    """decode_one(encode(p) + rest) == (p, rest) for every payload within the limit."""
    assert decode_one(encode(payload) + rest, limit=LIMIT) == (payload, rest)


@settings(max_examples=100)
@given(st.binary(max_size=300))
def test_every_prefix_waits(payload: bytes) -> None:
    """A netstring cut anywhere is 'need more data' (None), never an error."""
    wire = encode(payload)
    for cut in range(len(wire)):
        assert decode_one(wire[:cut], limit=LIMIT) is None


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_garbage_raises_only_netstring_error(junk: bytes) -> None:
    """Untrusted input: the only exception is NetstringError (a ValueError)."""
    with contextlib.suppress(NetstringError):
        decode_one(junk, limit=LIMIT)


@settings(max_examples=200)
@given(st.binary(max_size=40))
def test_none_means_some_continuation_is_valid(junk: bytes) -> None:
    """The contract: None only while buf may still grow into a valid netstring."""
    try:
        got = decode_one(junk, limit=100)
    except NetstringError:
        return
    if got is not None:
        return
    colon = junk.find(b":")
    digits = (junk if colon < 0 else junk[:colon]) or b"0"
    size = int(digits)
    body = junk[colon + 1 :] if colon >= 0 else b""
    completed = digits + b":" + body + b"x" * (size - len(body)) + b","
    assert completed.startswith(junk)
    assert decode_one(completed, limit=100) is not None


@pytest.mark.parametrize("wire", [b"01:a,", b"00:,", b"007:abcdefg,", b"01", b"00"])
def test_leading_zeros_refused(wire: bytes) -> None:
    """The spec forbids leading zeros (only ``0`` itself starts with 0), even before ':'."""
    with pytest.raises(NetstringError):
        decode_one(wire, limit=LIMIT)


def test_zero_length_is_fine() -> None:
    assert decode_one(b"0:,rest", limit=LIMIT) == (b"", b"rest")


@pytest.mark.parametrize("wire", [b"2049:", b"2049", b"9999", b"99999", b"3000:" + b"x" * 10])
def test_over_limit_refused_before_payload_arrives(wire: bytes) -> None:
    """A length over the limit is refused from the length field alone (no allocation)."""
    with pytest.raises(NetstringError, match=r"limit|length"):
        decode_one(wire, limit=LIMIT)


def test_huge_length_field_refused_without_a_colon() -> None:
    """A peer sending endless digits is cut off after len(str(limit)) + 1 bytes."""
    with pytest.raises(NetstringError):
        decode_one(b"1" * 6, limit=LIMIT)
    with pytest.raises(NetstringError):
        decode_one(b"1" * 10_000_000, limit=LIMIT)


def test_exactly_the_limit_is_accepted() -> None:
    payload = b"x" * LIMIT
    assert decode_one(encode(payload), limit=LIMIT) == (payload, b"")


@pytest.mark.parametrize(
    "wire", [b"3:abc;", b"3:abcd", b":abc,", b"a:", b"-1:", b" 3:abc,", b"3 :abc,", b"+3:abc,"]
)
def test_malformed_raises(wire: bytes) -> None:
    """Missing comma, empty/non-digit/signed length fields are errors, not waits."""
    with pytest.raises(NetstringError):
        decode_one(wire, limit=LIMIT)


@settings(max_examples=100)
@given(st.lists(st.binary(max_size=100), max_size=10))
def test_decode_all_round_trip(items: list[bytes]) -> None:
    assert decode_all(b"".join(encode(i) for i in items), limit=100, max_items=10) == items


def test_decode_all_refuses_truncated_tail() -> None:
    """decode_all wants complete netstrings only: a torn last one is an error."""
    with pytest.raises(NetstringError, match="truncated"):
        decode_all(encode(b"a") + b"3:ab", limit=100, max_items=10)


def test_decode_all_counts_items() -> None:
    wire = encode(b"a") * 3
    assert decode_all(wire, limit=100, max_items=3) == [b"a"] * 3
    with pytest.raises(NetstringError, match="more than 2 items"):
        decode_all(wire, limit=100, max_items=2)


def test_decode_all_empty_buffer_is_no_items() -> None:
    assert decode_all(b"", limit=100, max_items=0) == []
