"""formats.envelope: qmail-queue's fd 1 envelope and the queue's todo/channel files.

qmail-protocols §1 (grammar, exit codes 11/54/91), qmail-files §6.1 (todo,
local/S/N and remote/S/N records).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyqmail.formats.envelope import (
    MAX_ADDRESS_BYTES,
    Envelope,
    EnvelopeError,
    QueuedEnvelope,
    channel_offsets,
    format_todo,
    format_wire,
    parse_channel,
    parse_todo,
    parse_wire,
)

addresses = st.binary(max_size=60).map(lambda b: b.replace(b"\0", b"x"))


def test_wire_example_from_the_reference() -> None:
    """qmail-protocols §1: ``Fa@example.org\\0Tb@example.net\\0Tc@example.net\\0\\0``."""
    wire = b"Fa@example.org\0Tb@example.net\0Tc@example.net\0\0"
    env = parse_wire(wire)
    assert env == Envelope(b"a@example.org", (b"b@example.net", b"c@example.net"))
    assert format_wire(env) == wire


def test_empty_sender_and_zero_recipients_are_accepted() -> None:
    """qmail-protocols §1: ``F\\0`` is a bounce sender; ``F…\\0\\0`` has no recipients."""
    assert parse_wire(b"F\0\0") == Envelope(b"", ())
    assert parse_wire(b"F\0T\0\0") == Envelope(b"", (b"",))


@settings(max_examples=200)
@given(addresses, st.lists(addresses, max_size=8))
def test_wire_round_trip(sender: bytes, rcpts: list[bytes]) -> None:
    env = Envelope(sender, tuple(rcpts))
    assert parse_wire(format_wire(env)) == env


@settings(max_examples=100)
@given(addresses, st.lists(addresses, max_size=5), st.data())
def test_truncated_wire_exits_54(sender: bytes, rcpts: list[bytes], data: st.DataObject) -> None:
    """qmail-queue exits 54 (read error) when fd 1 hits EOF before the final NUL."""
    wire = format_wire(Envelope(sender, tuple(rcpts)))
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(EnvelopeError) as info:
        parse_wire(wire[:cut])
    assert info.value.code == 54


@pytest.mark.parametrize(
    "wire",
    [
        b"Xa@b\0\0",  # first record is not F
        b"\0\0",
        b"\0",
        b"Fa@b\0Xc@d\0\0",  # a recipient record that is not T
        b"Fa@b\0Tc@d\0Ue@f\0\0",
    ],
)
def test_bad_record_exits_91(wire: bytes) -> None:
    """qmail-queue exits 91 (envelope format error) on a record that is not F/T."""
    with pytest.raises(EnvelopeError) as info:
        parse_wire(wire)
    assert info.value.code == 91


@pytest.mark.parametrize("where", ["sender", "recipient"])
def test_address_of_1000_bytes_exits_11(where: str) -> None:
    """qmail-queue exits 11 ('address too long', permanent) for addresses >= 1000 bytes."""
    long = b"a" * MAX_ADDRESS_BYTES
    env = Envelope(long, (b"b@c",)) if where == "sender" else Envelope(b"a@b", (long,))
    with pytest.raises(EnvelopeError) as info:
        parse_wire(format_wire(env))
    assert info.value.code == 11


def test_address_of_999_bytes_is_fine() -> None:
    addr = b"a" * (MAX_ADDRESS_BYTES - 1)
    assert parse_wire(format_wire(Envelope(addr, (addr,)))) == Envelope(addr, (addr,))


def test_too_many_recipients_is_permanent() -> None:
    wire = format_wire(Envelope(b"a@b", (b"c@d",) * 3))
    assert len(parse_wire(wire, max_rcpts=3).recipients) == 3
    with pytest.raises(EnvelopeError) as info:
        parse_wire(wire, max_rcpts=2)
    assert info.value.code == 11


def test_todo_layout_matches_qmail_queue() -> None:
    """qmail-files §6.1: todo/N is ``u<uid>\\0p<pid>\\0F…\\0T…\\0`` with no extra NUL."""
    env = QueuedEnvelope(1000, 4242, b"a@b", (b"c@d", b"e@f"))
    assert format_todo(env) == b"u1000\0p4242\0Fa@b\0Tc@d\0Te@f\0"


@settings(max_examples=200)
@given(
    st.integers(0, 2**32),
    st.integers(0, 2**32),
    addresses,
    st.lists(addresses, max_size=8),
)
def test_todo_round_trip(uid: int, pid: int, sender: bytes, rcpts: list[bytes]) -> None:
    env = QueuedEnvelope(uid, pid, sender, tuple(rcpts))
    assert parse_todo(format_todo(env)) == env


@pytest.mark.parametrize(
    "data",
    [
        b"u1\0p2\0Fa@b\0Tc@d",  # torn: no final NUL
        b"u1\0p2\0Tc@d\0",  # T before F
        b"u1\0p2\0Fa@b\0Fx@y\0",  # second F
        b"ux\0p2\0Fa@b\0",  # uid not a number
        b"u1\0p2\0",  # no sender
        b"u1\0p2\0Fa@b\0Xc@d\0",
    ],
)
def test_bad_todo_is_format_error(data: bytes) -> None:
    with pytest.raises(EnvelopeError) as info:
        parse_todo(data)
    assert info.value.code == 91


def test_channel_records_and_done_marks() -> None:
    """qmail-files §6.1: ``T<rcpt>\\0`` pending, first byte rewritten to ``D`` when done."""
    data = b"Ta@b\0Dc@d\0Te@f\0"
    assert parse_channel(data) == [(False, b"a@b"), (True, b"c@d"), (False, b"e@f")]
    assert channel_offsets(data) == [0, 5, 10]
    for off in channel_offsets(data):
        assert data[off : off + 1] in (b"T", b"D")


def test_channel_torn_last_record_is_ignored() -> None:
    """A record half-appended when qmail-send crashed was never committed."""
    data = b"Ta@b\0Dc@d\0Te@"
    assert parse_channel(data) == [(False, b"a@b"), (True, b"c@d")]
    assert channel_offsets(data) == [0, 5]


def test_channel_bad_mark_is_format_error() -> None:
    with pytest.raises(EnvelopeError) as info:
        parse_channel(b"Ta@b\0Xc@d\0")
    assert info.value.code == 91


@settings(max_examples=200)
@given(st.lists(st.tuples(st.booleans(), addresses), max_size=8), st.binary(max_size=20))
def test_channel_round_trip_with_any_torn_tail(
    records: list[tuple[bool, bytes]], tail: bytes
) -> None:
    """Every committed record is read back, and flipping the byte at each offset
    from T to D marks exactly that record done."""
    data = b"".join((b"D" if done else b"T") + addr + b"\0" for done, addr in records)
    torn = b"T" + tail.replace(b"\0", b"")
    assert parse_channel(data + torn) == records
    offsets = channel_offsets(data + torn)
    assert len(offsets) == len(records)
    for i, off in enumerate(offsets):
        flipped = data[:off] + b"D" + data[off + 1 :]
        assert parse_channel(flipped)[i] == (True, records[i][1])
