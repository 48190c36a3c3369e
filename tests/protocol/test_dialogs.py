"""Replay the C:/S: transcripts in tests/dialogs/ against the server engine.

Format: "C: text" is a line the client sends (CRLF appended; "C:" alone is
an empty line); "S: 250 ok" expects a reply with that code whose text
starts with "ok" (the text is optional); "#" starts a comment. Client
lines between two S: lines are sent together, as a pipelining client would.
The policy accepts everything, as qmail-smtpd does with open rcpthosts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from pyqmail.proto.smtp import replies
from pyqmail.proto.smtp.replies import Reply
from pyqmail.proto.smtp.server import (
    NEED_DATA,
    Auth,
    AuthLine,
    BareLineFeed,
    Bdat,
    ConnectionClosed,
    Data,
    DataChunk,
    Event,
    Helo,
    Help,
    Quit,
    Rejected,
    Rset,
    SMTPServer,
    StartTls,
    Unknown,
    Vrfy,
)

DIALOGS = sorted((Path(__file__).parent.parent / "dialogs").glob("*.txt"))


def policy(event: Event) -> Reply | None:
    """Accept everything: 354 for DATA, 250 ok for the message."""
    match event:
        case Rejected(reply=reply):
            return reply
        case Helo(extended=True):
            return Reply(250, "mx.example\nPIPELINING\n8BITMIME")
        case Helo():
            return Reply(250, "mx.example")
        case Unknown():
            return replies.UNIMPLEMENTED
        case Data():
            return replies.GO_AHEAD
        case Quit():
            return Reply(221, "mx.example")
        case Rset():
            return replies.FLUSHED
        case Vrfy():
            return replies.VRFY
        case Help():
            return replies.HELP
        case StartTls():
            return replies.TLS_UNAVAILABLE
        case Auth(initial=None):
            return Reply(334, "")
        case Auth() | AuthLine():
            return replies.AUTH_OK
        case BareLineFeed():
            return replies.BARE_LF
        case DataChunk() | Bdat() | ConnectionClosed():
            return None
        case _:
            return replies.OK


@dataclass(frozen=True)
class Step:
    client: bytes  # lines to send, CRLF-terminated
    server: list[tuple[int, str]]  # expected (code, text prefix) replies


def parse_dialog(text: str) -> list[Step]:
    steps: list[Step] = []
    client: list[bytes] = []
    server: list[tuple[int, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        kind, _, rest = line.partition(":")
        rest = rest[1:] if rest.startswith(" ") else rest
        if kind == "C":
            if server:
                steps.append(Step(b"".join(client), server))
                client, server = [], []
            client.append(rest.encode() + b"\r\n")
        elif kind == "S":
            code, _, prefix = rest.partition(" ")
            server.append((int(code), prefix))
        else:
            raise ValueError(f"line {n}: expected C: or S:")
    steps.append(Step(b"".join(client), server))
    return steps


def split_replies(wire: bytes) -> list[tuple[int, str]]:
    """(code, text) per reply; multi-line texts joined with "\\n"."""
    out: list[tuple[int, str]] = []
    lines: list[str] = []
    for line in wire.decode().split("\r\n")[:-1]:
        lines.append(line[4:])
        if line[3] == " ":
            out.append((int(line[:3]), "\n".join(lines)))
            lines = []
    return out


def answer(server: SMTPServer, data: bytes) -> bytes:
    """Feed data and answer every event; returns the reply bytes."""
    wire = bytearray()
    server.receive_data(data)
    while not server.closed:
        event = server.next_event()
        if event is NEED_DATA:
            break
        reply = policy(event)
        if reply is not None:
            wire += server.send(reply)
    return bytes(wire)


def greeted() -> SMTPServer:
    server = SMTPServer()
    server.send(Reply(220, "mx.example ESMTP"))
    return server


@pytest.mark.parametrize("path", DIALOGS, ids=[p.stem for p in DIALOGS])
def test_dialog(path: Path) -> None:
    server = greeted()
    for step in parse_dialog(path.read_text()):
        got = split_replies(answer(server, step.client))
        assert [code for code, _ in got] == [code for code, _ in step.server], step.client
        for (_, text), (_, prefix) in zip(got, step.server, strict=True):
            assert text.startswith(prefix), (text, prefix)
    assert server.closed  # every dialog ends with QUIT


@pytest.mark.parametrize("path", DIALOGS, ids=[p.stem for p in DIALOGS])
def test_dialog_pipelined_whole_or_byte_by_byte(path: Path) -> None:
    # RFC 2920: the replies do not depend on how the client batches its lines.
    steps = parse_dialog(path.read_text())
    wire = b"".join(step.client for step in steps)
    expected = [reply for step in steps for reply in step.server]
    whole = split_replies(answer(greeted(), wire))
    server = greeted()
    trickle = split_replies(b"".join(answer(server, wire[i : i + 1]) for i in range(len(wire))))
    assert whole == trickle
    assert [code for code, _ in whole] == [code for code, _ in expected]


def test_dialog_files_exist() -> None:
    assert len(DIALOGS) >= 10
