"""The QMTP and QMQP engines (qmail-protocols §7): the spec's worked examples,
every split point, strict netstrings, limits, and garbage that never crashes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyqmail.formats.netstring import NetstringError, encode
from pyqmail.proto.qmtp.client import ResponseReader, qmqp_frame, qmtp_package
from pyqmail.proto.qmtp.events import (
    NEED_DATA,
    ConnectionClosed,
    MessageChunk,
    MessageStart,
    Package,
    Recipient,
    RemoteProtocolError,
)
from pyqmail.proto.qmtp.server import PackageEngine, QMQPServer, QMTPServer
from pyqmail.proto.qmtp.stream import NetstringStream

MSG = b"Subject: hi\n\nhello\n"
# qmail-protocols §7.2 and §7.3, byte for byte
QMTP_EXAMPLE = (
    b"20:\nSubject: hi\n\nhello\n,13:a@example.org,34:13:b@example.net,13:c@example.net,,"
)
QMQP_EXAMPLE = b"57:19:Subject: hi\n\nhello\n,13:a@example.org,13:b@example.net,,"


def drive(engine: PackageEngine, *pieces: bytes, eof: bool = True) -> list[object]:
    """Feed pieces one by one, collecting events; merge adjacent chunks."""
    events: list[object] = []
    feed = [p for p in pieces if p]  # b"" is EOF: only ever at the end
    if eof:
        feed.append(b"")
    for piece in feed:
        engine.receive_data(piece)
        while True:
            ev = engine.next_event()
            if ev is NEED_DATA:
                break
            if isinstance(ev, MessageChunk) and events and isinstance(events[-1], MessageChunk):
                events[-1] = MessageChunk(events[-1].data + ev.data)
            else:
                events.append(ev)
            if isinstance(ev, ConnectionClosed):
                return events
    return events


def test_qmtp_worked_example() -> None:
    events = drive(QMTPServer(), QMTP_EXAMPLE)
    assert events == [
        MessageStart(),
        MessageChunk(MSG),
        Package(
            b"a@example.org",
            True,
            (Recipient(b"b@example.net", True), Recipient(b"c@example.net", True)),
            False,
            len(MSG),
        ),
        ConnectionClosed(),
    ]


def test_qmtp_crlf_encoding_becomes_unix_form() -> None:
    """'\\r' encoding: CR LF -> LF, a lone CR stays (§7.2)."""
    wire = encode(b"\rSubject: hi\r\n\r\nhello\r\nbare\rcr\r\n") + b"0:,0:,"
    events = drive(QMTPServer(), wire)
    assert events[1] == MessageChunk(b"Subject: hi\n\nhello\nbare\rcr\n")


def test_qmtp_crlf_split_between_cr_and_lf() -> None:
    wire = encode(b"\ra\r\nb\r") + b"0:,0:,"
    cut = wire.index(b"\r\n") + 1
    events = drive(QMTPServer(), wire[:cut], wire[cut:])
    assert events[1] == MessageChunk(b"a\nb\r")


def test_qmtp_client_package_is_the_spec_example() -> None:
    assert qmtp_package(MSG, b"a@example.org", [b"b@example.net", b"c@example.net"]) == (
        QMTP_EXAMPLE
    )


def test_qmqp_client_frame_is_the_spec_example() -> None:
    prefix, suffix = qmqp_frame(len(MSG), b"a@example.org", [b"b@example.net"])
    assert prefix + MSG + suffix == QMQP_EXAMPLE


def test_qmqp_worked_example_one_package_then_done() -> None:
    events = drive(QMQPServer(), QMQP_EXAMPLE + b"trailing junk is never read")
    assert events[:2] == [MessageStart(), MessageChunk(MSG)]
    assert events[2] == Package(
        b"a@example.org", True, (Recipient(b"b@example.net", True),), False, len(MSG)
    )


@pytest.mark.parametrize("cut", range(len(QMTP_EXAMPLE) + 1))
def test_qmtp_split_anywhere(cut: int) -> None:
    whole = drive(QMTPServer(), QMTP_EXAMPLE)
    assert drive(QMTPServer(), QMTP_EXAMPLE[:cut], QMTP_EXAMPLE[cut:]) == whole


@pytest.mark.parametrize("cut", range(len(QMQP_EXAMPLE) + 1))
def test_qmqp_split_anywhere(cut: int) -> None:
    whole = drive(QMQPServer(), QMQP_EXAMPLE)
    assert drive(QMQPServer(), QMQP_EXAMPLE[:cut], QMQP_EXAMPLE[cut:]) == whole


def test_qmtp_several_packages_per_connection() -> None:
    two = QMTP_EXAMPLE + qmtp_package(b"second\n", b"", [b"d@example.net"])
    packages = [e for e in drive(QMTPServer(), two) if isinstance(e, Package)]
    assert [p.recipients[0].address for p in packages] == [b"b@example.net", b"d@example.net"]
    assert packages[1].sender == b""


@pytest.mark.parametrize(
    "wire",
    [
        b"020:\nSubject: hi\n\nhello\n,",  # leading zero
        b"20:\nSubject: hi\n\nhello\n;",  # missing comma
        b"20x\nSubject",  # not a length
        b":",  # empty length
        b"0:,",  # QMTP message without its encoding byte
        b"3:xab,",  # encoding neither \n nor \r
        b"2:\na,13:a@example.org,5:9:b,,",  # recipient runs past its list
        b"99999999999999999999:",  # length field too wide: refused before allocation
    ],
)
def test_qmtp_malformed_is_a_protocol_error(wire: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        drive(QMTPServer(), wire)


def test_qmqp_inner_overrun_is_a_protocol_error() -> None:
    """qmail-qmqpd: a length field counts against the declared total (exit 100)."""
    with pytest.raises(RemoteProtocolError):
        drive(QMQPServer(), b"10:19:Subject: hi\n\nhello\n,0:,,")


def test_eof_inside_a_package_is_a_protocol_error() -> None:
    with pytest.raises(RemoteProtocolError):
        drive(QMTPServer(), QMTP_EXAMPLE[:-3])


def test_eof_before_anything_is_a_clean_close() -> None:
    assert drive(QMTPServer(), b"") == [ConnectionClosed()]
    assert drive(QMQPServer(), b"") == [ConnectionClosed()]


def test_oversize_message_is_read_dropped_and_flagged() -> None:
    """databytes: the message is read to the end but never held; Package says too_big."""
    big = b"x" * 5000 + b"\n"
    events = drive(QMTPServer(max_message_bytes=100), qmtp_package(big, b"a@b", [b"c@d"]))
    chunks = b"".join(e.data for e in events if isinstance(e, MessageChunk))
    assert len(chunks) == 100
    (pkg,) = [e for e in events if isinstance(e, Package)]
    assert pkg.too_big
    assert pkg.size == 101


def test_exactly_at_the_limit_is_not_too_big() -> None:
    events = drive(QMQPServer(max_message_bytes=len(MSG)), QMQP_EXAMPLE)
    (pkg,) = [e for e in events if isinstance(e, Package)]
    assert not pkg.too_big


def test_long_or_nul_addresses_are_unacceptable_not_fatal() -> None:
    """qmail-qmtpd: >= 1000 bytes or a NUL -> that recipient gets D; the rest go on."""
    long = b"x" * 1000 + b"@example.net"
    wire = qmtp_package(MSG, b"a\0b", [long, b"ok@example.net", b"n\0ul@example.net"])
    (pkg,) = [e for e in drive(QMTPServer(), wire) if isinstance(e, Package)]
    assert not pkg.sender_ok
    assert [r.acceptable for r in pkg.recipients] == [False, True, False]
    assert pkg.recipients[0].address == b""  # never held in memory


def test_response_encoding_and_reader() -> None:
    wire = QMTPServer.response(b"Kok 1710231302 qp 4242") + QMTPServer.response(b"Dno")
    assert wire == b"22:Kok 1710231302 qp 4242,3:Dno,"
    reader = ResponseReader()
    got = []
    for byte in wire:
        reader.receive_data(bytes([byte]))
        r = reader.next_response()
        if r is not None:
            got.append((r.status, r.text))
    assert got == [("K", b"ok 1710231302 qp 4242"), ("D", b"no")]
    with pytest.raises(ValueError):
        QMTPServer.response(b"ok")


def test_response_reader_refuses_garbage() -> None:
    reader = ResponseReader()
    reader.receive_data(b"2:ok,")
    with pytest.raises(NetstringError):
        reader.next_response()


def test_stream_container_accounting() -> None:
    s = NetstringStream()
    s.receive_data(b"8:3:abc,,")
    assert s.read_length() == 8
    s.enter(8)
    assert s.read_length() == 3
    assert s.read_payload(3) == b"abc"
    assert s.read_comma()
    assert s.container_left() == 2  # '8' counted the inner string's 6 bytes, 2 remain
    with pytest.raises(NetstringError):
        s.read_length()  # ",," cannot be a length


# -- untrusted bytes: hypothesis --------------------------------------------------


def _run_to_end(engine: PackageEngine, wire: bytes, step: int) -> None:
    for i in range(0, len(wire), step):
        engine.receive_data(wire[i : i + step])
        while not isinstance(engine.next_event(), type(NEED_DATA) | ConnectionClosed):
            pass
    engine.receive_data(b"")
    for _ in range(10_000):  # the engine must settle: one event per step at most
        ev = engine.next_event()
        if isinstance(ev, ConnectionClosed) or ev is NEED_DATA:
            return


def some_bytes(max_size: int) -> st.SearchStrategy[bytes]:
    """Any bytes, empty included, though the drawn choice never is b"": python -bb
    turns hypothesis's cache comparing b"" with 0 (equal hashes) into an error."""
    return st.binary(min_size=1, max_size=max_size + 1).map(lambda b: b[1:])


netstringish = st.lists(
    st.one_of(
        some_bytes(30),
        some_bytes(30).map(encode),
        st.sampled_from([b":", b",", b"0:,", b"\n", b"\r", b"00:", b"1:", b"9999:"]),
    ),
    max_size=12,
).map(b"".join)


@settings(max_examples=400)
@given(netstringish, st.integers(min_value=1, max_value=7), st.booleans())
def test_garbage_gives_only_protocol_errors(wire: bytes, step: int, qmtp: bool) -> None:
    """Malformed input: the engine raises RemoteProtocolError or ends, nothing else."""
    engine: PackageEngine = QMTPServer(max_message_bytes=50) if qmtp else QMQPServer(50)
    try:
        _run_to_end(engine, wire, step)
    except RemoteProtocolError:
        assert engine.closed


@settings(max_examples=150)
@given(
    some_bytes(200),
    some_bytes(40),
    st.lists(some_bytes(40), max_size=5),
    st.integers(min_value=1, max_value=50),
)
def test_any_valid_package_round_trips(
    message: bytes, sender: bytes, rcpts: list[bytes], step: int
) -> None:
    """Client encoding -> server engine gives back exactly what was sent."""
    for engine, wire in (
        (QMTPServer(), qmtp_package(message, sender, rcpts)),
        (
            QMQPServer(),
            b"".join(
                [
                    qmqp_frame(len(message), sender, rcpts)[0],
                    message,
                    qmqp_frame(len(message), sender, rcpts)[1],
                ]
            ),
        ),
    ):
        pieces = [wire[i : i + step] for i in range(0, len(wire), step)]
        events = drive(engine, *pieces)
        data = b"".join(e.data for e in events if isinstance(e, MessageChunk))
        (pkg,) = [e for e in events if isinstance(e, Package)]
        assert data == message
        assert pkg.sender == sender
        assert [r.address for r in pkg.recipients] == rcpts
        assert all(r.acceptable == (b"\0" not in r.address) for r in pkg.recipients)


def test_too_many_recipients_is_dropped_unanswered() -> None:
    """Every recipient is owed an answer, so the count is bounded: past it the
    package is a protocol error (no answer = temporary failure for the client)."""
    wire = qmtp_package(MSG, b"a@b", [b"r%d@example.net" % i for i in range(4)])
    with pytest.raises(RemoteProtocolError):
        drive(QMTPServer(max_recipients=3), wire)
    events = drive(QMTPServer(max_recipients=4), wire)
    assert any(isinstance(e, Package) for e in events)
