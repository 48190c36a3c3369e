"""The SMTP server engine: every rule of the contract pinned by a test.

A tiny accept-everything policy answers each event; tests look at the
events the engine produced and the bytes it would have written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyqmail.proto.smtp import replies
from pyqmail.proto.smtp.replies import Reply
from pyqmail.proto.smtp.server import (
    MAX_CHUNK_BYTES,
    NEED_DATA,
    Auth,
    AuthLine,
    BareLineFeed,
    Bdat,
    BdatEnd,
    ConnectionClosed,
    Data,
    DataChunk,
    EndOfData,
    Event,
    Helo,
    Help,
    Limits,
    LocalProtocolError,
    Mail,
    Noop,
    Quit,
    Rcpt,
    Rejected,
    RemoteProtocolError,
    Rset,
    SMTPServer,
    StartTls,
    State,
    Unknown,
    Vrfy,
)

GREETING = Reply(220, "mx.example ESMTP")


def accept_all(event: Event) -> Reply | None:
    """The test policy: say yes to everything, as qmail-smtpd would with open rcpthosts."""
    match event:
        case Rejected(reply=reply):
            return reply
        case Unknown():
            return replies.UNIMPLEMENTED
        case Data():
            return replies.GO_AHEAD
        case Quit():
            return replies.BYE
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


Policy = Callable[[Event], Reply | None]
E = TypeVar("E")
DEFAULT = Limits()


@dataclass
class Session:
    server: SMTPServer
    policy: Policy = accept_all
    events: list[Event] = field(default_factory=list)
    wire: bytearray = field(default_factory=bytearray)
    error: RemoteProtocolError | None = None

    def feed(self, *chunks: bytes) -> Session:
        """Feed each non-empty chunk, then drain events answering with the policy."""
        for chunk in chunks:
            if self.server.closed or self.error is not None:
                break
            if chunk:
                self.server.receive_data(chunk)
                self.drain()
        return self

    def eof(self) -> Session:
        """The peer closes its side."""
        if not self.server.closed and self.error is None:
            self.server.receive_data(b"")
            self.drain()
        return self

    def drain(self) -> None:
        while not self.server.closed and self.error is None:
            try:
                event = self.server.next_event()
            except RemoteProtocolError as e:
                self.error = e
                if e.reply is not None:
                    self.wire += self.server.send(e.reply)
                return
            if event is NEED_DATA:
                return
            self.events.append(event)
            reply = self.policy(event)
            if reply is not None:
                self.wire += self.server.send(reply)

    @property
    def codes(self) -> list[int]:
        return [int(line[:3]) for line in bytes(self.wire).split(b"\r\n") if line[3:4] == b" "]

    @property
    def data(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, DataChunk))

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


def session(limits: Limits = DEFAULT, policy: Policy = accept_all) -> Session:
    server = SMTPServer(limits)
    s = Session(server, policy)
    s.wire += server.send(GREETING)
    return s


def run(*chunks: bytes, limits: Limits = DEFAULT, policy: Policy = accept_all) -> Session:
    return session(limits, policy).feed(*chunks)


def run_to_eof(*chunks: bytes, limits: Limits = DEFAULT) -> Session:
    return session(limits).feed(*chunks).eof()


ENVELOPE = b"EHLO c.example\r\nMAIL FROM:<a@c.example>\r\nRCPT TO:<b@mx.example>\r\n"


def message(body: bytes, *, limits: Limits = DEFAULT) -> Session:
    return run(ENVELOPE + b"DATA\r\n" + body, limits=limits)


def rejected(s: Session) -> list[Reply]:
    return [e.reply for e in s.events if isinstance(e, Rejected)]


# -- greeting and reply order (LocalProtocolError: our bugs) --------------------


def test_first_send_is_the_greeting() -> None:
    server = SMTPServer()
    with pytest.raises(LocalProtocolError):
        server.next_event()  # nothing may be read before we greet
    with pytest.raises(LocalProtocolError):
        server.send(replies.OK)  # a greeting is 220, 421 or 554 (RFC 5321 §3.1)
    assert server.send(GREETING) == b"220 mx.example ESMTP\r\n"
    assert server.state is State.COMMAND


def test_421_greeting_closes() -> None:
    server = SMTPServer()
    server.send(Reply(421, "busy"))
    assert server.closed


def test_send_without_a_pending_command_is_our_bug() -> None:
    s = session()
    with pytest.raises(LocalProtocolError):
        s.server.send(replies.OK)


def test_next_event_before_answering_is_our_bug() -> None:
    s = session()
    s.server.receive_data(b"NOOP\r\nNOOP\r\n")
    assert s.server.next_event() == Noop()
    with pytest.raises(LocalProtocolError):
        s.server.next_event()  # the reply may change how the next bytes are read


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"NOOP\r\n", replies.GO_AHEAD),  # 354 only answers DATA
        (b"NOOP\r\n", Reply(334, "")),  # 334 only answers AUTH
        (b"NOOP\r\n", replies.TLS_READY),  # 220 only answers STARTTLS
        (b"NOOP\r\n", replies.BYE),  # 221 only answers QUIT
        (b"QUIT\r\n", replies.OK),  # and QUIT only gets 221 (RFC 5321 §4.1.1.10)
    ],
)
def test_reply_that_would_desynchronise_is_refused(line: bytes, reply: Reply) -> None:
    s = session()
    s.server.receive_data(line)
    s.server.next_event()
    with pytest.raises(LocalProtocolError):
        s.server.send(reply)


def test_receive_after_eof_is_our_bug() -> None:
    server = SMTPServer()
    server.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        server.receive_data(b"NOOP\r\n")


# -- command lines --------------------------------------------------------------


def test_verbs_are_case_insensitive() -> None:
    s = run(b"eHlO c.example\r\nmail from:<a@b>\r\nRcPt To:<c@d>\r\ndata\r\n")
    assert s.events == [Helo(b"c.example", True), Mail(b"a@b", ()), Rcpt(b"c@d", ()), Data()]


def test_line_ends_at_lf_and_cr_before_it_is_dropped() -> None:
    # qmail (§9.1): commands may end in a bare LF.
    s = run(b"HELO a\nHELO b\r\n")
    assert s.events == [Helo(b"a", False), Helo(b"b", False)]


def test_helo_and_ehlo_need_an_argument() -> None:
    s = run(b"HELO\r\nEHLO   \r\n")
    assert rejected(s) == [replies.HELO_ARGUMENT] * 2
    assert s.codes == [220, 501, 501]
    assert s.server.helo is None


def test_accepted_helo_is_recorded() -> None:
    s = run(b"EHLO c.example\r\n")
    assert s.server.helo == b"c.example"
    assert s.server.esmtp


def test_mail_and_rcpt_before_helo_are_allowed() -> None:
    # qmail: HELO is optional (§9.2 notes).
    s = run(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
    assert s.codes == [220, 250, 250]


def test_rcpt_before_mail_is_503() -> None:
    s = run(b"RCPT TO:<c@d>\r\n")
    assert rejected(s) == [replies.MAIL_FIRST]


def test_data_without_mail_is_503_mail_first() -> None:
    assert rejected(run(b"DATA\r\n")) == [replies.MAIL_FIRST]


def test_data_without_accepted_rcpt_is_503_rcpt_first() -> None:
    def no_rcpt(event: Event) -> Reply | None:
        if isinstance(event, Rcpt):
            return Reply(553, "sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)")
        return accept_all(event)

    s = run(b"MAIL FROM:<a@b>\r\nDATA\r\nRCPT TO:<c@d>\r\nDATA\r\n", policy=no_rcpt)
    assert rejected(s) == [replies.RCPT_FIRST, replies.RCPT_FIRST]


def test_mail_inside_transaction_replaces_it() -> None:
    # qmail: MAIL again inside a transaction is fine and drops the recipients.
    s = run(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nMAIL FROM:<e@f>\r\nDATA\r\n")
    assert s.codes == [220, 250, 250, 250, 503]
    assert rejected(s) == [replies.RCPT_FIRST]


def test_refused_mail_ends_the_old_transaction() -> None:
    # Pipelined RCPTs after a refused MAIL must not join the previous one.
    def refuse_second_mail(event: Event) -> Reply | None:
        if isinstance(event, Mail) and event.address == b"e@f":
            return Reply(553, "sorry, your envelope sender is in my badmailfrom list (#5.7.1)")
        return accept_all(event)

    s = run(
        b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nMAIL FROM:<e@f>\r\nRCPT TO:<g@h>\r\n",
        policy=refuse_second_mail,
    )
    assert rejected(s) == [replies.MAIL_FIRST]


@pytest.mark.parametrize(
    "line",
    [b"MAIL\r\n", b"MAIL <a@b>\r\n", b"MAIL FROM:\r\n", b"MAIL FROM:   \r\n", b"MAIL TO:<a@b>\r\n"],
)
def test_mail_without_from_and_argument_is_501(line: bytes) -> None:
    assert rejected(run(line)) == [replies.MAIL_SYNTAX]


@pytest.mark.parametrize("line", [b"RCPT\r\n", b"RCPT <a@b>\r\n", b"RCPT TO:\r\n"])
def test_rcpt_without_to_and_argument_is_501(line: bytes) -> None:
    assert rejected(run(b"MAIL FROM:<>\r\n" + line)) == [replies.RCPT_SYNTAX]


def test_empty_recipient_is_refused() -> None:
    # qmail 1.02 relayed ""@anyhost through an empty address.
    assert rejected(run(b"MAIL FROM:<>\r\nRCPT TO:<>\r\n")) == [replies.EMPTY_RECIPIENT]


def test_lenient_paths_and_params_pass_through() -> None:
    s = run(b"MAIL FROM: a@b SIZE=10 body=8bitmime\r\nRCPT TO:<@r1,@r2:c@d> NOTIFY=NEVER\r\n")
    assert s.events == [
        Mail(b"a@b", ((b"SIZE", b"10"), (b"BODY", b"8bitmime"))),
        Rcpt(b"c@d", ((b"NOTIFY", b"NEVER"),)),
    ]


def test_null_sender() -> None:
    assert run(b"MAIL FROM:<>\r\n").events == [Mail(b"", ())]


def test_address_over_900_bytes_is_555() -> None:
    s = run(b"MAIL FROM:<" + b"a" * 901 + b">\r\nMAIL FROM:<" + b"a" * 900 + b">\r\n")
    assert rejected(s) == [replies.ADDRESS_TOO_LONG]
    assert s.codes == [220, 555, 250]


def test_malformed_params_are_501() -> None:
    assert rejected(run(b"MAIL FROM:<a@b> SIZE=\r\n")) == [replies.BAD_PARAMS]


def test_non_ascii_addresses_pass_through() -> None:
    addr = "j\u00f6rg@b\u00fccher.example".encode()
    s = run(b"MAIL FROM:<" + addr + b"> SMTPUTF8\r\n")
    assert s.events == [Mail(addr, ((b"SMTPUTF8", None),))]


def test_too_many_recipients_is_452_and_not_a_bad_command() -> None:
    limits = Limits(max_recipients=2, max_bad_commands=1)
    s = run(b"MAIL FROM:<a@b>\r\n" + b"RCPT TO:<c@d>\r\n" * 6, limits=limits)
    assert s.codes == [220, 250, 250, 250, 452, 452, 452, 452]
    assert s.error is None  # RFC 5321 §4.5.3.1.10: the client sends the rest later


def test_rejected_rcpt_does_not_count_toward_limit() -> None:
    def every_other(event: Event) -> Reply | None:
        if isinstance(event, Rcpt) and event.address.startswith(b"no"):
            return Reply(550, "no")
        return accept_all(event)

    s = run(
        b"MAIL FROM:<a@b>\r\nRCPT TO:<no@d>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@d>\r\n",
        limits=Limits(max_recipients=2),
        policy=every_other,
    )
    assert s.codes == [220, 250, 550, 250, 250]
    assert s.server.recipients == 2


def test_unknown_verbs() -> None:
    s = run(b"EXPN root\r\nTURN\r\n\r\n\xff\xfe x\r\n")
    assert s.events == [Unknown(b"EXPN"), Unknown(b"TURN"), Unknown(b""), Unknown(b"\xff\xfe")]
    assert s.codes == [220, 502, 502, 502, 502]


def test_simple_commands() -> None:
    s = run(b"NOOP hi\r\nVRFY root\r\nHELP\r\nRSET\r\nQUIT\r\n")
    assert s.events == [Noop(), Vrfy(b"root"), Help(), Rset(), Quit()]
    assert s.codes == [220, 250, 252, 214, 250, 221]
    assert s.server.closed


def test_rset_ends_transaction() -> None:
    s = run(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRSET\r\nDATA\r\n")
    assert rejected(s) == [replies.MAIL_FIRST]


def test_helo_ends_transaction() -> None:
    # RFC 5321 §4.1.4: EHLO/HELO is an implicit RSET.
    s = run(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nHELO x\r\nDATA\r\n")
    assert rejected(s) == [replies.MAIL_FIRST]


def test_too_many_bad_commands_is_421_and_close() -> None:
    s = run(b"FOO\r\n" * 3 + b"RCPT TO:<a@b>\r\n" + b"NOOP\r\n", limits=Limits(max_bad_commands=3))
    assert s.error is not None
    assert s.error.reply == replies.TOO_MANY_ERRORS
    assert s.codes == [220, 502, 502, 502, 421]
    assert s.server.closed


def test_remote_protocol_error_repeats_until_answered() -> None:
    server = SMTPServer(Limits(max_bad_commands=0))
    server.send(GREETING)
    server.receive_data(b"FOO\r\n")
    with pytest.raises(RemoteProtocolError):
        server.next_event()
    with pytest.raises(RemoteProtocolError):
        server.next_event()
    server.send(replies.TOO_MANY_ERRORS)
    assert server.closed


def test_421_may_be_sent_at_any_time_and_closes() -> None:
    s = session()
    assert s.server.send(Reply(421, "shutting down")) == b"421 shutting down\r\n"
    assert s.server.closed
    with pytest.raises(LocalProtocolError):
        s.server.send(replies.OK)


def test_eof_is_connection_closed_and_partial_line_is_dropped() -> None:
    s = run_to_eof(b"NOOP\r\nQUI")
    assert s.events == [Noop(), ConnectionClosed()]
    assert s.server.closed


def test_quit_closes_and_ignores_the_rest() -> None:
    s = run(b"QUIT\r\nNOOP\r\n")
    assert s.events == [Quit()]
    s.server.receive_data(b"more")  # late bytes are harmless
    assert s.server.closed


def test_line_at_limit_is_accepted_one_more_is_500() -> None:
    limits = Limits(max_line_bytes=64)
    ok = b"NOOP " + b"x" * (64 - 7) + b"\r\n"
    long = b"NOOP " + b"x" * (64 - 6) + b"\r\n"
    assert len(ok) == 64
    s = run(ok + long + b"NOOP\r\n", limits=limits)
    assert s.codes == [220, 250, 500, 250]
    assert rejected(s) == [replies.LINE_TOO_LONG]


@pytest.mark.parametrize("piece", [1, 7, 100, 5000])
def test_long_line_buffer_stays_bounded(piece: int) -> None:
    limits = Limits(max_line_bytes=128)
    s = session(limits)
    wire = b"MAIL FROM:<" + b"a" * 10_000 + b">\r\nNOOP\r\n"
    for i in range(0, len(wire), piece):
        s.feed(wire[i : i + piece])
        assert len(s.server._buf) <= max(128, piece)  # white-box: the bound itself
    assert s.codes == [220, 500, 250]


def test_binary_commands_give_only_events() -> None:
    s = run(bytes(range(256)) * 4 + b"\r\n" + b"\x00\r\x00\n" + b"NOOP\r\n")
    assert s.events[-1] == Noop()
    assert all(isinstance(e, Unknown | Noop | Rejected) for e in s.events)


# -- DATA -----------------------------------------------------------------------


def test_data_crlf_to_lf_and_dot_unstuffing() -> None:
    s = message(b"Subject: x\r\n\r\n..one\r\n.two\r\n...\r\nend\r\n.\r\nQUIT\r\n")
    assert s.data == b"Subject: x\n\n.one\ntwo\n..\nend\n"
    assert s.of(EndOfData) == [EndOfData(size=len(s.data), too_big=False, hops=0)]
    assert s.codes == [220, 250, 250, 250, 354, 250, 221]


def test_dot_may_end_data_on_the_very_first_line() -> None:
    s = message(b".\r\n")
    assert s.data == b""
    assert s.of(EndOfData) == [EndOfData(0, False, 0)]


def test_cr_not_before_lf_is_kept() -> None:
    s = message(b"a\rb\r\r\n\r.\r\n.\r\n")
    assert s.data == b"a\rb\r\n\r.\n"


def test_bare_lf_in_data_is_reported_and_closes() -> None:
    # qmail: 451 See http://pobox.com/~djb/docs/smtplf.html. and disconnect.
    s = message(b"Subject: x\r\nbody\nmore\r\n.\r\nQUIT\r\n")
    assert s.events[-1] == BareLineFeed()
    assert not s.of(EndOfData)
    assert not s.of(Quit)  # the rest of the input is ignored
    assert s.codes[-1] == 451
    assert s.server.closed


@pytest.mark.parametrize(
    "smuggle",
    [
        b"\n.\n",
        b"\r.\r",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r\n.\r",
        b"\r.\r\n",
        b"\r\n.\r\r\n",
        b"\r\n\x00.\r\n",
    ],
)
def test_smtp_smuggling_never_ends_the_message(smuggle: bytes) -> None:
    # A second message hidden behind a non-CRLF.CRLF "end" must not be split
    # off (SMTP smuggling, 2023): either the whole thing is one message, or
    # the connection ends on a bare LF.
    body = b"Subject: one\r\n\r\nhello" + smuggle + b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\n"
    body += b"DATA\r\n\r\nsmuggled\r\n.\r\nQUIT\r\n"
    for cut in range(len(ENVELOPE) + 6, len(ENVELOPE) + 6 + len(body)):
        wire = ENVELOPE + b"DATA\r\n" + body
        s = run(wire[:cut], wire[cut:])
        assert not s.of(Mail)[1:], cut
        assert len(s.of(EndOfData)) <= 1
        if b"\n" in smuggle.replace(b"\r\n", b""):
            assert s.events[-1] == BareLineFeed()
        else:
            assert b"MAIL FROM:<evil@x>" in s.data


def test_dot_then_bare_lf_as_terminator_is_bare_lf() -> None:
    s = message(b"hi\r\n.\n")
    assert s.events[-1] == BareLineFeed()


PIPELINED_MESSAGE = (
    ENVELOPE
    + b"DATA\r\n"
    + b"Received: from a\r\nDelivered-To: b\r\nSubject: x\r\n\r\n"
    + b"..dot\r\nline\rcr\r\n.\r\n"
    + b"MAIL FROM:<>\r\nRCPT TO:<z@y>\r\nDATA\r\n.\r\nQUIT\r\n"
)


@pytest.mark.parametrize("cut", range(len(PIPELINED_MESSAGE) + 1))
def test_data_split_anywhere_gives_same_bytes(cut: int) -> None:
    whole = run(PIPELINED_MESSAGE)
    split = run(PIPELINED_MESSAGE[:cut], PIPELINED_MESSAGE[cut:])
    assert split.data == whole.data
    assert split.of(EndOfData) == whole.of(EndOfData)
    assert split.wire == whole.wire
    assert whole.data == b"Received: from a\nDelivered-To: b\nSubject: x\n\n.dot\nline\rcr\n"


# Bytes are drawn as integers: Hypothesis's own caches compare drawn bytes
# with drawn ints, which -bb turns into an error (BytesWarning).
_BYTE = st.one_of(st.integers(0, 255), st.sampled_from(b".\r\n"))
_BYTES = st.lists(_BYTE, max_size=600).map(bytes)
_LINE = st.lists(_BYTE, max_size=30).map(bytes).map(lambda b: b.translate(None, b"\r\n"))


@given(
    st.lists(_LINE, max_size=12),
    st.lists(st.integers(0, 400), max_size=6),
)
@settings(max_examples=200, deadline=None)
def test_dot_stuffed_message_round_trips(lines: list[bytes], cuts: list[int]) -> None:
    wire = b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines)
    wire = ENVELOPE + b"DATA\r\n" + wire + b".\r\nNOOP\r\n"
    points = sorted({min(c, len(wire)) for c in cuts})
    chunks = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    s = run(*chunks)
    expected = b"".join(ln + b"\n" for ln in lines)
    assert s.data == expected
    assert s.of(EndOfData)[0].size == len(expected)
    assert s.events[-1] == Noop()


def reference_body(wire: bytes) -> tuple[bytes, str]:
    """RFC 5321 §4.5.2 plus qmail's bare-LF rule, one byte at a time: (data, outcome)."""
    out = bytearray()
    i = 0
    line_start = True
    while True:
        if line_start and wire[i : i + 1] == b".":
            ahead = wire[i + 1 : i + 3]
            if ahead == b"\r\n":
                return bytes(out), "end"
            if ahead[:1] == b"\n":
                return bytes(out), "bare"
            if ahead in (b"", b"\r"):
                return bytes(out), "more"
            i += 1
        line_start = False
        if i >= len(wire):
            return bytes(out), "more"
        if wire[i] == 0x0A:
            return bytes(out), "bare"
        if wire[i : i + 2] == b"\r\n":
            out += b"\n"
            i += 2
            line_start = True
        elif wire[i:] == b"\r":
            return bytes(out), "more"
        else:
            out.append(wire[i])
            i += 1


_BODY_TOKENS = st.sampled_from([b".", b"\r", b"\n", b"a", b"\r\n", b".\r\n", b"\r\n.\r\n", b"\0"])


@given(st.lists(_BODY_TOKENS, max_size=30).map(b"".join), st.lists(st.integers(0, 80), max_size=5))
@settings(max_examples=200, deadline=None)
def test_data_decoder_matches_reference(body: bytes, cuts: list[int]) -> None:
    start = ENVELOPE + b"DATA\r\n"
    s = session().feed(start, *_chunks(body, cuts))
    data, outcome = reference_body(body)
    ends = s.of(EndOfData)
    if outcome == "end":
        assert s.data == data
        assert ends == [EndOfData(len(data), False, ends[0].hops)]
    elif outcome == "bare":
        assert s.events[-1] == BareLineFeed()
        assert not ends
    else:
        assert not ends
        assert data.startswith(s.data)
        assert len(data) - len(s.data) <= 1  # at most an undecided CR held back


def test_data_streams_in_bounded_chunks() -> None:
    line = b"x" * 998 + b"\r\n"
    s = session()
    s.feed(ENVELOPE + b"DATA\r\n")
    for _ in range(20):
        s.feed(line * 200)  # 200 KB per read, more than one chunk
        assert len(s.server._buf) < 3  # white-box: nothing but an undecided tail
    s.feed(b".\r\n")
    assert all(len(e.data) <= MAX_CHUNK_BYTES for e in s.of(DataChunk))
    assert len(s.data) == 20 * 200 * 999


def test_cr_at_buffer_end_waits_for_next_byte() -> None:
    s = session()
    s.feed(ENVELOPE + b"DATA\r\nab\r")
    assert s.data == b"ab"
    s.feed(b"\n.\r")
    assert s.data == b"ab\n"
    s.feed(b"\n")
    assert s.of(EndOfData)


def test_message_over_size_limit_is_read_to_the_end() -> None:
    # qmail reads the whole message and answers 552 after the dot.
    def databytes(event: Event) -> Reply | None:
        if isinstance(event, EndOfData) and event.too_big:
            return replies.TOO_BIG
        return accept_all(event)

    wire = ENVELOPE + b"DATA\r\n" + b"0123456789\r\n" * 10 + b".\r\nNOOP\r\n"
    s = run(wire, limits=Limits(max_message_bytes=50), policy=databytes)
    assert len(s.data) <= 50
    assert s.of(EndOfData) == [EndOfData(size=110, too_big=True, hops=0)]
    assert s.codes[-2:] == [552, 250]


def test_message_exactly_at_size_limit_is_fine() -> None:
    s = message(b"0123456789\r\n.\r\n", limits=Limits(max_message_bytes=11))
    assert s.of(EndOfData) == [EndOfData(11, False, 0)]


def test_hops_count_received_and_delivered_header_lines() -> None:
    # qmail: first 8 bytes "received" / first 9 "delivered", any case, no colon needed,
    # only in the header.
    header = (
        b"Received: a\r\nRECEIVED b\r\nreceived\r\nDelivered-To: c\r\nDELIVEREDx\r\n"
        b"Receive: no\r\nDeliver: no\r\nX-Received: no\r\n"
    )
    s = message(header + b"\r\nReceived: body\r\n.\r\n")
    assert s.of(EndOfData) == [EndOfData(len(s.data), False, 5)]


@pytest.mark.parametrize("cut", range(1, 40))
def test_hops_counted_across_any_split(cut: int) -> None:
    body = b"Received: a\r\nDelivered-To: b\r\n\r\nReceived: c\r\n.\r\n"
    wire = ENVELOPE + b"DATA\r\n" + body
    cut += len(ENVELOPE) + 6
    assert run(wire[:cut], wire[cut:]).of(EndOfData)[0].hops == 2


def reference_hops(body: bytes) -> int:
    header = body.split(b"\n\n", 1)[0] if not body.startswith(b"\n") else b""
    return sum(
        line[:8].lower() == b"received" or line[:9].lower() == b"delivered"
        for line in header.split(b"\n")
    )


_HEADER_TOKENS = st.sampled_from(
    [b"Received: x", b"RECEIVED", b"receive", b"Delivered-To: y", b"delivere", b"d", b"\n", b"x"]
)


@given(st.lists(_HEADER_TOKENS, max_size=25).map(b"".join), st.lists(st.integers(0, 300)))
@settings(max_examples=200, deadline=None)
def test_hop_count_matches_reference(body: bytes, cuts: list[int]) -> None:
    # BDAT carries the bytes unchanged (bare LF included), so the counter sees `body`.
    wire = ENVELOPE + b"BDAT %d LAST\r\n" % len(body) + body
    s = session().feed(*_chunks(wire, cuts))
    assert s.data == body
    assert s.of(BdatEnd)[0].hops == reference_hops(body)


def test_end_of_data_reply_ends_transaction() -> None:
    s = message(b"x\r\n.\r\nDATA\r\n")
    assert rejected(s) == [replies.MAIL_FIRST]


def test_refused_data_keeps_transaction() -> None:
    def qqt(event: Event) -> Reply | None:
        return replies.QQT_FAILURE if isinstance(event, Data) else accept_all(event)

    s = run(ENVELOPE + b"DATA\r\nRCPT TO:<x@y>\r\n", policy=qqt)
    assert s.codes == [220, 250, 250, 250, 451, 250]


def test_eof_inside_data() -> None:
    s = run_to_eof(ENVELOPE + b"DATA\r\nhalf a mess")
    assert s.events[-1] == ConnectionClosed()
    assert not s.of(EndOfData)


# -- BDAT (RFC 3030) --------------------------------------------------------------


def test_bdat_chunks() -> None:
    s = run(ENVELOPE + b"BDAT 9\r\nab\r\n.\r\nc BDAT 3 LAST\r\nd\r\nQUIT\r\n")
    assert s.of(Bdat) == [Bdat(9, False), Bdat(3, True)]
    assert s.data == b"ab\n.\nc d\n"  # no dot-unstuffing in BDAT
    assert s.of(BdatEnd) == [BdatEnd(False, 7, False, 0), BdatEnd(True, 9, False, 0)]
    assert s.codes == [220, 250, 250, 250, 250, 250, 221]


def test_bdat_crlf_split_between_chunks() -> None:
    s = run(ENVELOPE + b"BDAT 2\r\na\rBDAT 2 LAST\r\n\nb")
    assert s.data == b"a\nb"


def test_bdat_last_chunk_ending_in_cr_keeps_it() -> None:
    s = run(ENVELOPE + b"BDAT 2 LAST\r\na\r")
    assert s.data == b"a\r"
    assert s.of(BdatEnd) == [BdatEnd(True, 2, False, 0)]


def test_bdat_zero_last() -> None:
    s = run(ENVELOPE + b"BDAT 3\r\nab\nBDAT 0 LAST\r\n")
    assert s.data == b"ab\n"  # a bare LF is just a line end in binary chunks
    assert s.of(BdatEnd)[-1] == BdatEnd(True, 3, False, 0)


def test_bdat_without_transaction_consumes_the_chunk() -> None:
    # The chunk is data even when refused; "QUIT" inside must not run.
    s = run(b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
    assert rejected(s) == [replies.MAIL_FIRST]
    assert s.events[-1] == Noop()
    s = run(b"MAIL FROM:<>\r\nBDAT 6\r\nQUIT\r\nNOOP\r\n")
    assert rejected(s) == [replies.RCPT_FIRST]
    assert s.events[-1] == Noop()


def test_bdat_extra_words_are_501_and_chunk_consumed() -> None:
    s = run(ENVELOPE + b"BDAT 6 FIRST\r\nQUIT\r\nNOOP\r\n")
    assert rejected(s) == [replies.SYNTAX_ERROR]
    assert s.events[-1] == Noop()


@pytest.mark.parametrize(
    "line", [b"BDAT\r\n", b"BDAT x\r\n", b"BDAT -1\r\n", b"BDAT 1" + b"0" * 18]
)
def test_bdat_without_usable_size_closes(line: bytes) -> None:
    s = run(ENVELOPE + line + b"\r\n")
    assert s.error is not None
    assert s.codes[-1] == 421
    assert s.server.closed


def test_data_after_bdat_is_503() -> None:
    s = run(ENVELOPE + b"BDAT 1\r\nxDATA\r\n")
    assert rejected(s) == [replies.DATA_AFTER_BDAT]


def test_failed_chunk_fails_the_transaction() -> None:
    # RFC 3030 §2: after a 4xx/5xx to a chunk, pipelined chunks are read and refused.
    def refuse_chunk(event: Event) -> Reply | None:
        if isinstance(event, BdatEnd):
            return Reply(452, "no space")
        return accept_all(event)

    s = run(ENVELOPE + b"BDAT 1\r\nxBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n", policy=refuse_chunk)
    assert s.codes == [220, 250, 250, 250, 452, 503, 250]


def test_bdat_size_limit_and_hops() -> None:
    body = b"Received: a\r\nReceived: b\r\n\r\n" + b"x" * 100
    s = run(
        ENVELOPE + b"BDAT %d LAST\r\n" % len(body) + body + b"NOOP\r\n",
        limits=Limits(max_message_bytes=40),
    )
    assert s.of(BdatEnd) == [BdatEnd(True, len(body) - 3, True, 2)]
    assert len(s.data) <= 40
    assert s.events[-1] == Noop()


PIPELINED_BDAT = ENVELOPE + b"BDAT 4\r\na\r\nbBDAT 3 LAST\r\n\ncdQUIT\r\n"


@pytest.mark.parametrize("cut", range(len(PIPELINED_BDAT) + 1))
def test_bdat_split_anywhere(cut: int) -> None:
    s = run(PIPELINED_BDAT[:cut], PIPELINED_BDAT[cut:])
    assert s.data == b"a\nb\ncd"
    assert s.codes == [220, 250, 250, 250, 250, 250, 221]


def test_eof_inside_bdat() -> None:
    s = run_to_eof(ENVELOPE + b"BDAT 10\r\nabc")
    assert s.events[-1] == ConnectionClosed()


# -- STARTTLS (RFC 3207) ----------------------------------------------------------


def tls_policy(event: Event) -> Reply | None:
    return replies.TLS_READY if isinstance(event, StartTls) else accept_all(event)


def test_starttls_discards_pipelined_input_and_forgets_helo() -> None:
    # CVE-2011-0411: commands sent in plaintext after STARTTLS must not run under TLS.
    s = run(b"EHLO c\r\nMAIL FROM:<a@b>\r\nSTARTTLS\r\nRCPT TO:<evil@x>\r\n", policy=tls_policy)
    assert s.events == [Helo(b"c", True), Mail(b"a@b", ()), StartTls()]
    assert s.server.tls_active
    assert s.server.helo is None
    s.feed(b"RCPT TO:<c@d>\r\n")
    assert rejected(s) == [replies.MAIL_FIRST]  # the transaction is gone too


def test_refused_starttls_keeps_everything() -> None:
    s = run(b"EHLO c\r\nMAIL FROM:<a@b>\r\nSTARTTLS\r\nRCPT TO:<c@d>\r\n")
    assert s.codes == [220, 250, 250, 454, 250]
    assert s.server.helo == b"c"


def test_starttls_with_parameters_or_twice_is_refused() -> None:
    s = run(b"STARTTLS now\r\nSTARTTLS\r\n", b"STARTTLS\r\n", policy=tls_policy)
    assert rejected(s) == [replies.SYNTAX_ERROR, replies.TLS_ACTIVE]


# -- AUTH (RFC 4954) --------------------------------------------------------------


def test_auth_exchange_reads_raw_lines() -> None:
    def login(event: Event) -> Reply | None:
        if isinstance(event, Auth):
            return Reply(334, "VXNlcm5hbWU6")
        if isinstance(event, AuthLine) and event.line == b"dXNlcg==":
            return Reply(334, "UGFzc3dvcmQ6")
        return accept_all(event)

    s = run(b"EHLO c\r\nAUTH login\r\ndXNlcg==\r\nQUIT\r\nAUTH PLAIN x\r\n", policy=login)
    assert s.events[1:4] == [Auth(b"LOGIN", None), AuthLine(b"dXNlcg=="), AuthLine(b"QUIT")]
    assert s.server.authenticated
    assert rejected(s) == [replies.AUTH_ALREADY]  # RFC 4954 §4: only once


def test_auth_initial_response_and_long_lines() -> None:
    token = b"A" * 5000  # over max_line_bytes, under max_auth_line_bytes
    s = run(b"AUTH PLAIN " + token + b"\r\n")
    assert s.events == [Auth(b"PLAIN", token)]
    s = run(b"AUTH PLAIN\r\n" + token + b"\r\n")
    assert s.events == [Auth(b"PLAIN", None), AuthLine(token)]


def test_auth_line_over_limit_ends_exchange() -> None:
    limits = Limits(max_auth_line_bytes=100)
    s = run(b"AUTH PLAIN\r\n" + b"A" * 200 + b"\r\nNOOP\r\n", limits=limits)
    assert rejected(s) == [replies.LINE_TOO_LONG]
    assert s.events[-1] == Noop()
    assert not s.server.authenticated


def test_auth_in_transaction_or_malformed_is_refused() -> None:
    s = run(b"AUTH\r\nAUTH A B C\r\nMAIL FROM:<>\r\nAUTH PLAIN\r\n")
    assert rejected(s) == [replies.SYNTAX_ERROR, replies.SYNTAX_ERROR, replies.AUTH_IN_TRANSACTION]


# -- properties over whole sessions -----------------------------------------------

PIPELINED = (
    b"EHLO c.example\r\nMAIL FROM:<a@c.example> BODY=8BITMIME\r\n"
    b"RCPT TO:<b@mx.example>\r\nRCPT TO:<c@mx.example>\r\nDATA\r\n"
)


@pytest.mark.parametrize("cut", range(len(PIPELINED) + 1))
def test_pipelined_envelope_split_anywhere(cut: int) -> None:
    # RFC 2920: a pipelined envelope parses the same however TCP splits it.
    events = run(PIPELINED[:cut], PIPELINED[cut:]).events
    assert events == run(PIPELINED).events
    assert [type(e) for e in events] == [Helo, Mail, Rcpt, Rcpt, Data]


def test_pipelined_envelope_byte_by_byte() -> None:
    s = run(*[PIPELINED[i : i + 1] for i in range(len(PIPELINED))])
    assert s.events == run(PIPELINED).events


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _survive(chunks: list[bytes], limits: Limits) -> None:
    s = session(limits).feed(*chunks).eof()
    assert s.server.closed or s.error is not None or isinstance(s.events[-1], Quit)


TOKENS = [
    b"EHLO x\r\n",
    b"HELO\r\n",
    b"MAIL FROM:<a@b>\r\n",
    b"MAIL FROM:",
    b"RCPT TO:<c@d>\r\n",
    b"RCPT TO:<",
    b"DATA\r\n",
    b"BDAT 5\r\n",
    b"BDAT 2 LAST\r\n",
    b"BDAT x\r\n",
    b"AUTH PLAIN\r\n",
    b"STARTTLS\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b".\r\n",
    b"..\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"Received: x\r\n",
    b"x" * 70,
    b"\x00\xff",
]


@given(_BYTES, st.lists(st.integers(0, 600), max_size=8))
@settings(max_examples=200, deadline=None)
def test_random_bytes_raise_only_remote_protocol_error(junk: bytes, cuts: list[int]) -> None:
    _survive(_chunks(junk, cuts), Limits(max_line_bytes=64, max_message_bytes=100))


@given(
    st.lists(st.sampled_from(TOKENS), max_size=40),
    st.lists(st.integers(0, 2000), max_size=8),
)
@settings(max_examples=200, deadline=None)
def test_command_soup_raises_only_remote_protocol_error(
    tokens: list[bytes], cuts: list[int]
) -> None:
    wire = b"".join(tokens)
    _survive(_chunks(wire, cuts), Limits(max_line_bytes=64, max_message_bytes=100))
    # The same soup, split differently, gives the same replies.
    whole = run_to_eof(wire, limits=Limits(max_line_bytes=64))
    split = run_to_eof(*_chunks(wire, cuts), limits=Limits(max_line_bytes=64))
    assert split.wire == whole.wire
    if not whole.of(BareLineFeed):  # an aborted message may have streamed some bytes
        assert split.data == whole.data
