"""The POP3 engine: states, parsing, limits; fed bytes, no I/O."""

from __future__ import annotations

import pytest

from pyqmail.proto.pop3 import server as eng
from pyqmail.proto.pop3.server import NEED_DATA, POP3Server


def events(engine: POP3Server, data: bytes) -> list[eng.Event]:
    """Feed data (b"" feeds nothing: EOF is receive_data(b"")), answer each event
    with +OK, collect events until NEED_DATA."""
    if data:
        engine.receive_data(data)
    out: list[eng.Event] = []
    while True:
        ev = engine.next_event()
        if ev is NEED_DATA:
            return out
        assert not isinstance(ev, eng._NeedData)
        out.append(ev)
        if isinstance(ev, eng.ConnectionClosed):
            return out
        engine.ok()


def test_authorization_state_accepts_only_qmail_popups_commands() -> None:
    e = POP3Server()
    got = events(e, b"STAT\r\nUSER alice\r\nPASS secret word\r\nlist\r\n")
    assert got == [
        eng.Rejected(b"-ERR authorization first\r\n"),
        eng.User(b"alice"),
        eng.Pass(b"alice", b"secret word"),  # the rest of the line: spaces allowed
        eng.Rejected(b"-ERR authorization first\r\n"),
    ]


def test_pass_needs_user_first_and_user_is_used_once() -> None:
    e = POP3Server()
    assert events(e, b"PASS x\r\nUSER a\r\nPASS x\r\nPASS y\r\n") == [
        eng.Rejected(b"-ERR USER first\r\n"),
        eng.User(b"a"),
        eng.Pass(b"a", b"x"),
        eng.Rejected(b"-ERR USER first\r\n"),
    ]


def test_apop_capa_stls_noop_quit() -> None:
    e = POP3Server()
    got = events(e, b"APOP bob 0123abcd\r\nCAPA\r\nSTLS\r\nNOOP\r\nQUIT\r\nNOOP\r\n")
    assert got == [
        eng.Apop(b"bob", b"0123abcd"),
        eng.Capa(),
        eng.Stls(),
        eng.Noop(),
        eng.Quit(),
        eng.ConnectionClosed(),
    ]


def test_transaction_commands_and_arguments() -> None:
    e = POP3Server(transaction=True)
    got = events(
        e,
        b"STAT\r\nLIST\r\nLIST 2\r\nUIDL\r\nUIDL 1\r\nRETR 3\r\nTOP 1 10\r\nDELE 2\r\n"
        b"RSET\r\nLAST\r\nUSER x\r\n",
    )
    assert got == [
        eng.Stat(),
        eng.List(None),
        eng.List(2),
        eng.Uidl(None),
        eng.Uidl(1),
        eng.Retr(3),
        eng.Top(1, 10),
        eng.Dele(2),
        eng.Rset(),
        eng.Last(),
        eng.Rejected(b"-ERR unimplemented\r\n"),
    ]


@pytest.mark.parametrize(
    "line",
    [b"RETR", b"RETR x", b"RETR -1", b"RETR 1 2", b"TOP 1", b"DELE 1234567890", b"LIST 1 2"],
)
def test_bad_arguments_are_rejected(line: bytes) -> None:
    e = POP3Server(transaction=True)
    assert events(e, line + b"\r\n") == [eng.Rejected(b"-ERR syntax error\r\n")]


def test_every_split_point_gives_the_same_events() -> None:
    wire = b"USER alice\r\nPASS pw\r\nQUIT\r\n"
    want = events(POP3Server(), wire)
    for cut in range(len(wire) + 1):
        e = POP3Server()
        got = events(e, wire[:cut])
        if eng.ConnectionClosed() not in got:
            got += events(e, wire[cut:])
        assert got == want


def test_bare_lf_lines_are_accepted() -> None:
    assert events(POP3Server(), b"USER a\nPASS b\n") == [eng.User(b"a"), eng.Pass(b"a", b"b")]


def test_over_long_line_is_dropped_as_it_arrives() -> None:
    e = POP3Server(eng.Limits(max_line_bytes=64))
    assert events(e, b"USER " + b"x" * 100) == []
    assert len(e.pending_input()) == 0
    assert events(e, b"x" * 10_000) == []
    assert events(e, b"yyy\r\nNOOP\r\n") == [
        eng.Rejected(b"-ERR line too long\r\n"),
        eng.Noop(),
    ]
    assert events(e, b"USER " + b"x" * 70 + b"\r\n") == [eng.Rejected(b"-ERR line too long\r\n")]


def test_too_many_errors_close() -> None:
    e = POP3Server(eng.Limits(max_bad_commands=3))
    got = events(e, b"X\r\nX\r\nX\r\nNOOP\r\n")
    assert got[-2:] == [
        eng.Rejected(b"-ERR too many errors\r\n", close=True),
        eng.ConnectionClosed(),
    ]


def test_stls_discards_pipelined_plaintext() -> None:
    # RFC 2595 §4 / the STARTTLS command-injection bugs: nothing sent behind
    # STLS in the clear may be read as a command after the handshake
    e = POP3Server()
    e.receive_data(b"STLS\r\nUSER evil\r\n")
    assert e.next_event() == eng.Stls()
    e.ok(b"begin TLS")
    e.start_tls()
    assert e.next_event() is NEED_DATA


def test_eof_closes() -> None:
    e = POP3Server()
    e.receive_data(b"NOO")
    assert e.next_event() is NEED_DATA
    e.receive_data(b"")
    assert e.next_event() == eng.ConnectionClosed()


def test_one_reply_per_event() -> None:
    e = POP3Server()
    e.receive_data(b"NOOP\r\nNOOP\r\n")
    e.next_event()
    with pytest.raises(eng.LocalProtocolError):
        e.next_event()


def test_multiline_stuffs_dots() -> None:
    e = POP3Server()
    e.receive_data(b"CAPA\r\n")
    e.next_event()
    assert e.multiline(b"x", [b"A", b".B"]) == b"+OK x\r\nA\r\n..B\r\n.\r\n"


def test_authenticated_moves_to_transaction() -> None:
    e = POP3Server()
    events(e, b"USER a\r\nPASS b\r\n")
    e.authenticated()
    assert events(e, b"STAT\r\n") == [eng.Stat()]
    with pytest.raises(eng.LocalProtocolError):
        e.start_tls()
