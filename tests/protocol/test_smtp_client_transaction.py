"""The sans-IO client transaction fed scripted server replies (issue #6)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyqmail.proto.smtp.client import ReplyParser, ServerReply, dot_stuff
from pyqmail.proto.smtp.transaction import ClientTransaction, Stage, TransactionError

WIRE = b"Subject: x\r\n\r\nbody\r\n.\r\n"


def reply(text: bytes) -> ServerReply:
    (r,) = ReplyParser().feed(text + b"\r\n")
    return r


def tx_for(rcpts: int, *, pipelining: bool, rset_first: bool = False) -> ClientTransaction:
    return ClientTransaction(
        b"a@example.org",
        tuple(b"r%d@example.net" % i for i in range(rcpts)),
        b" SIZE=20",
        WIRE,
        pipelining=pipelining,
        rset_first=rset_first,
    )


def drive(tx: ClientTransaction, answer: Callable[[bytes], bytes]) -> list[list[bytes]]:
    """Play the server: each write's commands (the message shows as b"<message>")."""
    writes: list[list[bytes]] = []
    pending: list[ServerReply] = []
    for _ in range(1000):
        if tx.done:
            return writes
        out = tx.to_send()
        if out == WIRE:
            writes.append([b"<message>"])
            pending.append(reply(answer(b"<message>")))
        elif out:
            lines = out.split(b"\r\n")[:-1]
            writes.append(lines)
            pending.extend(reply(answer(line)) for line in lines)
        tx.receive(pending.pop(0))
    raise AssertionError("the transaction never ended")


def happy(line: bytes) -> bytes:
    if line == b"DATA":
        return b"354 go"
    return b"250 ok"


def test_pipelined_envelope_is_one_write_and_the_message_waits_for_354() -> None:
    tx = tx_for(2, pipelining=True)
    writes = drive(tx, happy)
    assert writes == [
        [
            b"MAIL FROM:<a@example.org> SIZE=20",
            b"RCPT TO:<r0@example.net>",
            b"RCPT TO:<r1@example.net>",
            b"DATA",
        ],
        [b"<message>"],
    ]
    assert all(o is not None and o.accepted for o in tx.outcomes)
    assert (tx.messages, tx.needs_rset, tx.broken) == (1, False, False)


def test_without_pipelining_one_command_at_a_time() -> None:
    writes = drive(tx_for(2, pipelining=False), happy)
    assert [len(w) for w in writes] == [1, 1, 1, 1, 1]


def test_rset_first_when_the_last_transaction_was_left_open() -> None:
    writes = drive(tx_for(1, pipelining=True, rset_first=True), happy)
    assert writes[0][0] == b"RSET"


@pytest.mark.parametrize("pipelining", [True, False])
def test_refused_sender_decides_for_everyone(pipelining: bool) -> None:
    tx = tx_for(3, pipelining=pipelining)

    def answer(line: bytes) -> bytes:
        return b"553 no" if line.startswith(b"MAIL") else b"503 need MAIL"

    writes = drive(tx, answer)
    assert [o.stage if o else None for o in tx.outcomes] == [Stage.MAIL] * 3
    assert tx.needs_rset
    if not pipelining:
        assert writes == [[b"MAIL FROM:<a@example.org> SIZE=20"]]


@pytest.mark.parametrize("pipelining", [True, False])
def test_no_recipient_accepted_sends_no_message(pipelining: bool) -> None:
    tx = tx_for(2, pipelining=pipelining)

    def answer(line: bytes) -> bytes:
        if line.startswith(b"RCPT"):
            return b"550 no"
        return b"554 no valid recipients" if line == b"DATA" else b"250 ok"

    writes = drive(tx, answer)
    assert [b"<message>"] not in writes
    assert all(b"DATA" not in w for w in writes) or pipelining
    assert [o.stage if o else None for o in tx.outcomes] == [Stage.RCPT, Stage.RCPT]
    assert tx.needs_rset
    assert not tx.broken


def test_data_accepted_for_nobody_leaves_the_server() -> None:
    tx = tx_for(1, pipelining=True)
    drive(tx, lambda line: b"550 no" if line.startswith(b"RCPT") else happy(line))
    assert tx.broken


def test_too_many_recipients_go_again_in_further_transactions() -> None:
    """RFC 5321 §4.5.3.1.10: a 452 recipient waits for the next transaction."""
    tx = tx_for(5, pipelining=True)
    seen = {"rcpts": 0}

    def answer(line: bytes) -> bytes:
        if line.startswith(b"MAIL"):
            seen["rcpts"] = 0
        if line.startswith(b"RCPT"):
            seen["rcpts"] += 1
            return b"452 too many" if seen["rcpts"] > 2 else b"250 ok"
        return happy(line)

    writes = drive(tx, answer)
    assert [sum(x.startswith(b"RCPT") for x in w) for w in writes] == [5, 0, 3, 0, 1, 0]
    assert all(o is not None and o.accepted for o in tx.outcomes)
    assert tx.messages == 3


def test_no_progress_ends_the_452_rounds() -> None:
    tx = tx_for(2, pipelining=True)
    drive(tx, lambda line: b"452 full" if line.startswith(b"RCPT") else happy(line))
    assert [o.reply.code if o and o.reply else None for o in tx.outcomes] == [452, 452]


def test_died_after_the_dot_marks_possible_duplicates() -> None:
    tx = tx_for(2, pipelining=True)
    tx.to_send()
    for r in (b"250 ok", b"250 ok", b"550 no", b"354 go"):
        tx.receive(reply(r))
    assert tx.to_send() == WIRE
    tx.died()
    assert [(o.stage, o.after_dot) if o else None for o in tx.outcomes] == [
        (Stage.DIED, True),
        (Stage.RCPT, False),
    ]


def test_unasked_reply_is_an_error() -> None:
    tx = tx_for(1, pipelining=False)
    with pytest.raises(TransactionError):
        tx.receive(reply(b"250 ok"))


CODES = st.sampled_from([b"250 ok", b"354 go", b"421 bye", b"451 later", b"452 full", b"550 no"])


@settings(deadline=None)  # a loaded shared machine must not fail a timing-free property
@given(st.lists(CODES, min_size=1, max_size=60), st.booleans(), st.integers(1, 6))
def test_any_replies_end_with_an_outcome_for_everyone(
    codes: list[bytes], pipelining: bool, rcpts: int
) -> None:
    tx = tx_for(rcpts, pipelining=pipelining)
    feed = iter(codes)
    try:
        drive(tx, lambda _line: next(feed, b"421 out of replies"))
    except TransactionError:
        tx.died()
    assert tx.done
    assert all(o is not None for o in tx.outcomes)


def _dot_stuff_by_lines(message: bytes) -> bytes:
    """The definition, one line at a time (as qmail-remote does it)."""
    lines = message.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = [
        b"." + line if line.startswith(b".") else line
        for line in (line[:-1] if line.endswith(b"\r") else line for line in lines)
    ]
    return b"\r\n".join(out) + b"\r\n.\r\n" if out else b".\r\n"


@given(st.lists(st.sampled_from([b"\n", b"\r", b".", b"a", b"\r\n", b"\n.", b".\r"])).map(b"".join))
def test_dot_stuff_is_the_line_by_line_definition(message: bytes) -> None:
    assert dot_stuff(message) == _dot_stuff_by_lines(message)
