"""qmail-inject's header rewriting, flags and environment (qmail-programs "qmail-inject").

Most cases run the real program entry point with -n, which prints the
Return-Path and the header qmail-inject would queue.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyqmail.config import Home
from pyqmail.formats.envelope import parse_wire
from pyqmail.inject import main as inject
from pyqmail.inject import token822 as tk
from pyqmail.inject.header import (
    InjectError,
    Injector,
    known_field,
    read_header,
    settings_from_env,
)
from pyqmail.inject.sgetopt import PROBLEM, GetOpt
from pyqmail.ipc.queue_proto import QueueResult, SyncSubmission

BASE_ENV = {b"USER": b"joe"}


@pytest.fixture
def home(tmp_path: Path) -> Home:
    (tmp_path / "control").mkdir()
    (tmp_path / "control" / "me").write_text("mx.example.com\n")
    (tmp_path / "control" / "defaultdomain").write_text("example.com\n")
    (tmp_path / "control" / "plusdomain").write_text("plus.example\n")
    return Home(str(tmp_path))


def run_n(home: Home, message: bytes, *args: str, **env: str) -> tuple[int, bytes]:
    """qmail-inject -n: (exit code, what it printed)."""
    out = io.BytesIO()
    full_env = dict(BASE_ENV)
    full_env.update({k.encode(): v.encode() for k, v in env.items()})
    code = inject.run(["qmail-inject", "-n", *args], full_env, io.BytesIO(message), out, home)
    return code, out.getvalue()


def header_lines(text: bytes) -> list[bytes]:
    return text.split(b"\n\n")[0].split(b"\n")


def field(text: bytes, name: bytes) -> bytes | None:
    for line in header_lines(text):
        if line.lower().startswith(name.lower() + b":"):
            return line.split(b":", 1)[1].strip()
    return None


# -- generated fields ---------------------------------------------------------


def test_adds_date_message_id_from_and_cc_before_the_original_fields(home: Home) -> None:
    code, out = run_n(home, b"Subject: hi\n\nbody\n")
    assert code == 0
    lines = header_lines(out)
    assert lines[0] == b"Return-Path: <joe@mx.example.com>"
    assert re.fullmatch(rb"Date: \d+ \w{3} \d{4} \d\d:\d\d:\d\d -0000", lines[1])
    assert re.fullmatch(rb"Message-ID: <\d{14}\.\d+\.qmail@mx\.example\.com>", lines[2])
    assert lines[3:] == [
        b"From: joe@mx.example.com",
        b"Cc: recipient list not shown: ;",
        b"Subject: hi",
    ]
    assert out.endswith(b"\n\nbody\n")


def test_existing_date_message_id_from_to_are_kept(home: Home) -> None:
    msg = b"Date: x\nMessage-ID: <a@b>\nFrom: me@h.example\nTo: you@h.example\n\n"
    _, out = run_n(home, msg)
    assert header_lines(out) == [
        b"Return-Path: <joe@mx.example.com>",
        b"Date: x",
        b"Message-ID: <a@b>",
        b"From: me@h.example",
        b"To: you@h.example",
    ]


def test_resent_message_gets_resent_fields(home: Home) -> None:
    msg = b"From: a@x.example\nTo: b@x.example\nResent-To: c@x.example\n\n"
    inj = _injector()
    for f in read_header(io.BytesIO(msg).readline).fields:
        inj.field(f)
    head = inj.finish()
    lines = head.split(b"\n")
    assert lines[0].startswith(b"Resent-Date: ")
    assert lines[1].startswith(b"Resent-Message-ID: <")
    assert lines[2] == b"Resent-From: joe@mx.example.com"
    assert lines[3:6] == [b"From: a@x.example", b"To: b@x.example", b"Resent-To: c@x.example"]
    # a resent message goes to the Resent- recipients only
    assert inj.recipients(from_header=True) == [b"c@x.example"]


def test_idhost_and_qmailidhost(home: Home) -> None:
    (Path(home.root) / "control" / "idhost").write_text("ids.example\n")
    _, out = run_n(home, b"\n")
    assert re.search(rb"Message-ID: <\d{14}\.\d+\.qmail@ids\.example>", out)
    _, out = run_n(home, b"\n", QMAILIDHOST="env.example")
    assert b".qmail@env.example>" in out


# -- address qualification ----------------------------------------------------


@pytest.mark.parametrize(
    ("given_addr", "expected"),
    [
        (b"joe", b"joe@mx.example.com"),  # defaulthost (me)
        (b"joe@host", b"joe@host.example.com"),  # defaultdomain
        (b"joe@host+", b"joe@host.plus.example"),  # plusdomain
        (b"joe@[1.2.3.4]", b"joe@[1.2.3.4]"),  # literal: left alone
        (b"joe@a.b", b"joe@a.b"),
        (b"joe@a.b.", b"joe@a.b"),  # trailing dot removed
        (b"@r1,@r2:joe@a.b", b"@r1,@r2:joe@a.b"),  # an argument's local part is quoted
        (b"joe@localhost", b"joe@localhost"),  # RFC 6761: never qualified
        (b"joe smith@a.b", b"joe smith@a.b"),  # quoted only on the way in
    ],
)
def test_recipient_arguments_are_qualified(home: Home, given_addr: bytes, expected: bytes) -> None:
    inj = _injector()
    inj.add_recipient(given_addr)
    assert inj.recipients(from_header=False) == [expected]


def test_defaulthost_defaultdomain_plusdomain_from_environment(home: Home) -> None:
    _, out = run_n(
        home,
        b"To: a, b@c, d@e+\n\n",
        QMAILDEFAULTHOST="dh.example",
        QMAILDEFAULTDOMAIN="dd.example",
        QMAILPLUSDOMAIN="pd.example",
    )
    assert field(out, b"To") == b"a@dh.example, b@c.dd.example, d@e.pd.example"


def test_source_routes_in_fields_are_stripped(home: Home) -> None:
    _, out = run_n(home, b"To: Joe <@r1,@r2:joe@a.b>\n\n")
    assert field(out, b"To") == b"Joe <joe@a.b>"


def test_empty_addresses_become_angle_brackets(home: Home) -> None:
    for weird in (b"<@>", b"<.>", b"<@host:>", b"<>"):
        _, out = run_n(home, b"Reply-To: " + weird + b"\n\n")
        assert field(out, b"Reply-To") == b"<>", weird


def test_illegal_spaces_become_commas_and_long_lists_fold(home: Home) -> None:
    _, out = run_n(home, b"To: a@x.y b@x.y\n\n")
    assert field(out, b"To") == b"a@x.y, b@x.y"
    many = b", ".join(b"user%d@example.com" % i for i in range(12))
    _, out = run_n(home, b"To: " + many + b"\n\n")
    to = out.split(b"To: ", 1)[1].split(b"\n\n")[0]
    assert to == (
        b"user0@example.com, user1@example.com, user2@example.com,\n"
        b"  user3@example.com, user4@example.com, user5@example.com, user6@example.com,\n"
        b"  user7@example.com, user8@example.com, user9@example.com, user10@example.com,\n"
        b"  user11@example.com"
    )


# -- recipients and -a -A -h -H -------------------------------------------------

MSG = (
    b"To: t@x.example, t2@x.example\nCc: c@x.example\n"
    b"Bcc: b@x.example\nApparently-To: p@x.example\n\n"
)
# each address list is read right to left, as qmail does
FROM_HEADER = [b"t2@x.example", b"t@x.example", b"c@x.example", b"b@x.example", b"p@x.example"]
ARG = [b"arg@x.example"]


class FakeSubmission:
    """Stands in for the queue writer's socket; keeps the envelope it is given."""

    def __init__(self) -> None:
        self.recipients: list[bytes] = []

    def write(self, data: bytes) -> None:
        pass

    def finish(self, wire: bytes) -> QueueResult:
        self.recipients = list(parse_wire(wire).recipients)
        return QueueResult("K", "ok", 1)


@pytest.mark.parametrize(
    ("opts", "args", "expected"),
    [
        ((), ("arg@x.example",), ARG),  # -A: the arguments when there are any
        ((), (), FROM_HEADER),  # -A: else the header
        (("-a",), (), []),
        (("-h",), ("arg@x.example",), FROM_HEADER),
        (("-H",), ("arg@x.example",), ARG + FROM_HEADER),
        (("-h", "-A"), ("arg@x.example",), ARG),  # the last option wins
        (("-n", "-N"), ("arg@x.example",), ARG),  # -N: queue after all
    ],
)
def test_recipient_strategies(
    monkeypatch: pytest.MonkeyPatch,
    opts: tuple[str, ...],
    args: tuple[str, ...],
    expected: list[bytes],
) -> None:
    sub = FakeSubmission()
    monkeypatch.setattr(SyncSubmission, "open", lambda *a, **k: sub)
    code = inject.run(
        ["qmail-inject", *opts, *args],
        dict(BASE_ENV),
        io.BytesIO(MSG),
        io.BytesIO(),
        Home("/nonexistent"),
    )
    assert code == 0
    assert sub.recipients == expected


def test_bcc_return_path_content_length_are_removed(home: Home) -> None:
    msg = (
        b"Return-Path: <rp@x.example>\nContent-Length: 5\nBcc: b@x.example\n"
        b"Resent-Bcc: r@x.example\nTo: t@x.example\n\nx\n"
    )
    code, out = run_n(home, msg)
    assert code == 0
    names = [ln.split(b":")[0] for ln in header_lines(out)]
    for gone in (b"Bcc", b"Content-Length", b"Resent-Bcc"):
        assert gone not in names
    # the Return-Path field gave the envelope sender
    assert header_lines(out)[0] == b"Return-Path: <rp@x.example>"


# -- envelope sender ------------------------------------------------------------


def test_f_overrides_return_path_and_empty_f_is_the_null_sender(home: Home) -> None:
    _, out = run_n(home, b"Return-Path: <rp@x.example>\n\n", "-f", "boss@x.example")
    assert header_lines(out)[0] == b"Return-Path: <boss@x.example>"
    _, out = run_n(home, b"\n", "-f", "")
    assert header_lines(out)[0] == b"Return-Path: <>"
    _, out = run_n(home, b"\n", "-f", "boss")
    assert header_lines(out)[0] == b"Return-Path: <boss@mx.example.com>"


def test_qmailsuser_qmailshost_set_the_default_sender_only(home: Home) -> None:
    _, out = run_n(home, b"\n", QMAILSUSER="bounces", QMAILSHOST="lists.example")
    assert header_lines(out)[0] == b"Return-Path: <bounces@lists.example>"
    assert field(out, b"From") == b"joe@mx.example.com"


def test_qmailinject_r_and_m(home: Home) -> None:
    _, out = run_n(home, b"\n", QMAILINJECT="r", QMAILHOST="h.example")
    # -n prints the envelope sender quoted: joe-@h.example-@[]
    assert header_lines(out)[0] == b'Return-Path: <"joe-@h.example-"@[]>'
    _, out = run_n(home, b"Return-Path: <list@h.example>\n\n", QMAILINJECT="r")
    assert header_lines(out)[0] == b'Return-Path: <"list@h.example-"@[]>'
    _, out = run_n(home, b"\n", "-f", "x@h.example", QMAILINJECT="r")
    assert header_lines(out)[0] == b"Return-Path: <x@h.example>"  # -f is never VERPed
    _, out = run_n(home, b"\n", QMAILINJECT="m", QMAILHOST="h.example")
    assert re.fullmatch(rb"Return-Path: <joe-\d+\.\d+@h\.example>", header_lines(out)[0])


def test_qmailinject_s_ignores_return_path(home: Home) -> None:
    _, out = run_n(home, b"Return-Path: <rp@x.example>\n\n", QMAILINJECT="s")
    assert header_lines(out)[0] == b"Return-Path: <joe@mx.example.com>"


# -- From and the user's identity -----------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, b"joe@mx.example.com"),
        ({"LOGNAME": "lg"}, b"joe@mx.example.com"),  # USER comes first
        ({"MAILUSER": "mu", "MAILHOST": "mh.example"}, b"mu@mh.example"),
        ({"QMAILUSER": "qu", "MAILUSER": "mu", "QMAILHOST": "qh.example"}, b"qu@qh.example"),
        ({"NAME": "Nick Name"}, b'"Nick Name" <joe@mx.example.com>'),
        ({"MAILNAME": "Mail Name", "NAME": "n"}, b'"Mail Name" <joe@mx.example.com>'),
        ({"QMAILNAME": "Q Name", "MAILNAME": "m"}, b'"Q Name" <joe@mx.example.com>'),
        ({"QMAILNAME": "Q Name", "QMAILINJECT": "c"}, b"joe@mx.example.com (Q Name)"),
        ({"QMAILUSER": "two words"}, b'"two words"@mx.example.com'),
    ],
)
def test_from_line_from_environment(home: Home, env: dict[str, str], expected: bytes) -> None:
    _, out = run_n(home, b"\n", **env)
    assert field(out, b"From") == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, b"anonymous@mx.example.com"),
        ({b"LOGNAME": b"lg"}, b"lg@mx.example.com"),
        ({b"LOGNAME": b"lg", b"USER": b"us"}, b"us@mx.example.com"),
        ({b"MAILUSER": b"mu", b"USER": b"us"}, b"mu@mx.example.com"),
    ],
)
def test_user_variables_in_order(home: Home, env: dict[bytes, bytes], expected: bytes) -> None:
    out = io.BytesIO()
    inject.run(["qmail-inject", "-n"], env, io.BytesIO(b"\n"), out, home)
    assert field(out.getvalue(), b"From") == expected


def test_qmailinject_f_and_i_drop_incoming_from_and_message_id(home: Home) -> None:
    msg = b"From: spoof@x.example\nMessage-ID: <old@x>\n\n"
    _, out = run_n(home, msg, QMAILINJECT="fi")
    assert field(out, b"From") == b"joe@mx.example.com"
    assert field(out, b"Message-ID") != b"<old@x>"
    assert b"spoof" not in out
    assert b"<old@x>" not in out


def test_mail_followup_to_for_a_listed_list(home: Home, tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    lists.write_text("# my lists\nList@Lists.example\n")
    msg = b"To: friend@x.example, list@lists.example\nCc: other@x.example\n\n"
    _, out = run_n(home, msg, QMAILMFTFILE=str(lists))
    mft = out.split(b"Mail-Followup-To: ", 1)[1].split(b"\nTo:")[0]
    # qmail's order: the fields last to first, each list left to right
    assert mft == b"other@x.example,\n  friend@x.example,\n  list@lists.example"
    _, out = run_n(home, b"To: friend@x.example\n\n", QMAILMFTFILE=str(lists))
    assert b"Mail-Followup-To" not in out


# -- header and body splitting --------------------------------------------------


def test_from_line_becomes_mbox_line_and_non_field_starts_the_body(home: Home) -> None:
    _, out = run_n(home, b"From joe Mon\nSubject: s\nnot a field\nrest")
    assert b"\nMBOX-Line: From joe Mon\nSubject: s\n\nnot a field\nrest\n" in out


def test_continuation_lines_stay_with_their_field(home: Home) -> None:
    _, out = run_n(home, b"Subject: one\n two\nTo: a@b.example,\n\tc@d.example\n\nx")
    assert b"Subject: one\n two\n" in out
    assert b"To: a@b.example, c@d.example\n" in out


def test_header_only_message_has_no_body(home: Home) -> None:
    _, out = run_n(home, b"Subject: s")
    assert out.endswith(b"Subject: s\n")


def test_overlong_header_field_is_refused() -> None:
    with pytest.raises(InjectError) as err:
        read_header(io.BytesIO(b"Subject: " + b"x" * 2000 + b"\n\n").readline, max_field=1000)
    assert err.value.code == 100
    with pytest.raises(InjectError):
        read_header(io.BytesIO(b"Subject: x\n" * 200 + b"\n").readline, max_header=1000)


def test_unparsable_header_exits_100(home: Home) -> None:
    for bad in (b'To: "open\n\n', b"To: )a\n\n", b"Cc: x> y\n\n", b"To: a;;\n\n", b"To: a:b\n\n"):
        code, _ = run_n(home, bad)
        assert code == 100, bad


# -- building blocks ------------------------------------------------------------


def _injector() -> Injector:
    s = settings_from_env(
        BASE_ENV,
        defaulthost=b"mx.example.com",
        defaultdomain=b"example.com",
        plusdomain=b"plus.example",
        idhost=b"mx.example.com",
    )
    return Injector(s, now=0.0, pid=1)


def test_known_field_matching() -> None:
    assert known_field(b"TO: x") == "to"
    assert known_field(b"to :x") == "to"
    assert known_field(b"Resent-To: x") == "resent-to"
    assert known_field(b"Resent_To: x") is None
    assert known_field(b"Toy: x") is None


def test_token822_round_trip_and_quoting() -> None:
    toks = tk.parse(b'To: "a \\" b" <x@[1.2.3.4]> (c (nested) \\) ok), d.e@f')
    assert [t.kind for t in toks][:4] == [tk.Kind.ATOM, tk.Kind.COLON, tk.Kind.QUOTE, tk.Kind.LEFT]
    assert toks[2].text == b'a " b'
    comment = next(t for t in toks if t.kind is tk.Kind.COMMENT)
    assert comment.text == b"c nested ) ok"
    assert tk.unparse(toks) == b'To: "a \\" b" <x@[1.2.3.4]>(c nested \\) ok), d.e@f\n'
    assert tk.parse(b"To: caf\xc3\xa9")[2].kind is tk.Kind.QUOTE  # 8-bit: quoted
    assert tk.quote2(b"a b@c") == b'"a b"@c'
    assert tk.quote2(b"a.b@c") == b"a.b@c"
    assert tk.quote2(b".a@c") == b'".a"@c'


@given(st.binary(max_size=200))
def test_token822_garbage_raises_only_its_error(junk: bytes) -> None:
    try:
        toks = tk.parse(b"To: " + junk)
        tk.unparse(tk.addrlist(toks, lambda a: a))
    except tk.Token822Error:
        pass


@given(st.lists(st.from_regex(rb"[a-z]{1,12}@[a-z]{1,10}\.example", fullmatch=True), max_size=30))
def test_addrlist_sees_every_address_right_to_left(addrs: list[bytes]) -> None:
    seen: list[bytes] = []

    def rw(a: list[tk.Token]) -> list[tk.Token]:
        seen.append(tk.unquote(a))
        return a

    out = tk.unparse(tk.addrlist(tk.parse(b"To: " + b", ".join(addrs)), rw))
    assert seen == list(reversed(addrs))
    assert all(len(line) <= 82 or b"," not in line for line in out.split(b"\n"))
    assert out.replace(b"\n ", b"") == (b"To: " + b", ".join(addrs)).rstrip() + b"\n"


def test_sgetopt_like_qmail() -> None:
    g = GetOpt(["p", "-tf", "x@y", "-oi", "-Ex", "--", "-a"], "tf:o:E")
    got = []
    while (o := g.next()) is not None:
        got.append((o, g.arg))
        if o == "E":
            g.skip_rest()
    assert got == [("t", None), ("f", "x@y"), ("o", "i"), ("E", None)]
    assert g.rest == ["-a"]
    g = GetOpt(["p", "-f"], "f:")
    assert g.next() == PROBLEM
    g = GetOpt(["p", "-", "x"], "f:")
    assert g.next() is None
    assert g.rest == ["-", "x"]


@given(st.binary(max_size=600))
def test_any_message_gives_a_header_or_a_permanent_error(message: bytes) -> None:
    """Header parsing never fails in any other way, and never loses the body."""
    inj = _injector()
    stream = io.BytesIO(message)
    try:
        split = read_header(stream.readline, max_field=200, max_header=400)
        for f in split.fields:
            inj.field(f)
        head = inj.finish()
    except InjectError as exc:
        assert exc.code == 100  # noqa: PT017 - the error is allowed, not expected
        return
    assert head.endswith(b"\n")
    assert inj.sender is not None
    rest = stream.read()
    if split.body_start:
        assert message.endswith(rest)
