"""Argument parsing (MAIL/RCPT paths, ESMTP parameters) and reply encoding."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyqmail.proto.smtp import commands, replies
from pyqmail.proto.smtp.commands import CommandSyntaxError, parse_params, parse_path, split_path
from pyqmail.proto.smtp.replies import Reply

MAX = 900


def rejects(arg: bytes, *, max_len: int = MAX) -> Reply:
    with pytest.raises(CommandSyntaxError) as info:
        parse_path(arg, max_len=max_len)
    return info.value.reply


# -- parse_path ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "address"),
    [
        (b"<a@b.example>", b"a@b.example"),
        (b"<>", b""),  # the null sender, RFC 5321 §4.5.5
        (b"   <a@b.example>", b"a@b.example"),  # qmail skips leading spaces
        (b"a@b.example", b"a@b.example"),  # qmail's lenient form without brackets
        (b"  a@b.example", b"a@b.example"),
        (b"<@relay1,@relay2:a@b.example>", b"a@b.example"),  # RFC 5321 §4.1.1.3 source route
        (b"@relay:a@b.example", b"a@b.example"),
        (b'<"a b"@x.example>', b"a b@x.example"),  # qmail keeps quoted local parts unquoted
        (b'<"a\\"b"@x.example>', b'a"b@x.example'),
        (b"<a\\ b@x.example>", b"a b@x.example"),  # qmail honours backslashes outside quotes
        (b"<Postmaster>", b"Postmaster"),  # RFC 5321 §4.5.1: no domain needed
        ("<j\u00f6rg@b\u00fccher.example>".encode(), "j\u00f6rg@b\u00fccher.example".encode()),
        (b"<a@b.example> SIZE=10", b"a@b.example"),  # parameters are not the path's business
    ],
)
def test_parse_path_accepts(arg: bytes, address: bytes) -> None:
    assert parse_path(arg, max_len=MAX) == address


@pytest.mark.parametrize(
    "arg",
    [
        b"",  # no argument at all
        b"   ",
        b"<a@b.example",  # no closing bracket
        b'<"a@b.example>',  # open quote
        b"<a@b.example>junk",  # parameters must follow a space
        b"<a<b@c.example>",  # stray bracket
        b"<<a@b.example>>",
        b"<a@b\x00.example>",  # NUL would split qmail's envelope records
        b"<a@b\r.example>",
        b"<a@b\x7f.example>",
        b"<a\\>",  # escape without a following byte in the path
        b"<@relay>",  # source route without the ":"
    ],
)
def test_parse_path_rejects_malformed_with_501(arg: bytes) -> None:
    assert rejects(arg).code == 501


def test_address_longer_than_limit_is_555() -> None:
    # qmail-smtpd: 555 syntax error (#5.5.4) above 900 bytes (reference §9.2).
    assert parse_path(b"<" + b"a" * MAX + b">", max_len=MAX) == b"a" * MAX
    assert rejects(b"<" + b"a" * (MAX + 1) + b">") is replies.ADDRESS_TOO_LONG
    assert Reply(555, "syntax error (#5.5.4)") == replies.ADDRESS_TOO_LONG


def test_split_path_returns_parameters_after_the_path() -> None:
    assert split_path(b"<a@b> SIZE=5 BODY=8BITMIME", max_len=MAX) == (
        b"a@b",
        b" SIZE=5 BODY=8BITMIME",
    )
    assert split_path(b"a@b SIZE=5", max_len=MAX) == (b"a@b", b" SIZE=5")
    assert split_path(b"<>", max_len=MAX) == (b"", b"")


_ATOM_CHARS = [chr(c) for c in range(0x21, 0x7F) if chr(c) not in '<>"\\@:,']
_ATOM = st.text(st.sampled_from(_ATOM_CHARS), min_size=1, max_size=20).map(str.encode)
_PRINTABLE = st.text(st.sampled_from([chr(c) for c in range(0x20, 0x7F)]), max_size=40)


@given(_ATOM, _ATOM)
@settings(max_examples=200)
def test_bracketed_address_round_trips(local: bytes, domain: bytes) -> None:
    assert parse_path(b"<%s@%s>" % (local, domain), max_len=MAX) == local + b"@" + domain
    assert parse_path(b"%s@%s" % (local, domain), max_len=MAX) == local + b"@" + domain


@given(_PRINTABLE.map(str.encode))
@settings(max_examples=200)
def test_quoted_local_part_is_unquoted(local: bytes) -> None:
    quoted = local.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    assert parse_path(b'<"%s"@x>' % quoted, max_len=MAX) == local + b"@x"


@given(
    st.lists(st.integers(0, 255), max_size=200).map(bytes)
)  # not st.binary: see -bb note in test_smtp_server
@settings(max_examples=200)
def test_garbage_raises_only_command_syntax_error(junk: bytes) -> None:
    with contextlib.suppress(CommandSyntaxError):
        address, rest = split_path(junk, max_len=50)
        assert len(address) <= 50
        assert not any(c < 0x20 or c == 0x7F for c in address)
        parse_params(rest)


def _outcome(split: Callable[..., tuple[bytes, bytes]], arg: bytes) -> object:
    try:
        return split(arg, max_len=12)
    except CommandSyntaxError as exc:
        return exc.reply


_PATHISH = st.lists(st.sampled_from([*b' <>@:,"\\ab.\x00\x7f', 0xC3, 0xB6]), max_size=24).map(bytes)


@given(_PATHISH)
@settings(max_examples=500)
def test_plain_path_shortcut_agrees_with_the_full_walk(arg: bytes) -> None:
    """split_path's regex shortcut for "<addr>" never answers differently."""
    assert _outcome(split_path, arg) == _outcome(commands._split_path_walk, arg)
    assert _outcome(split_path, b"<" + arg + b">") == _outcome(
        commands._split_path_walk, b"<" + arg + b">"
    )


# -- parse_params ----------------------------------------------------------------


def test_params_keys_uppercased_values_kept() -> None:
    assert parse_params(b" size=1000 Body=8BITMIME  SMTPUTF8") == (
        (b"SIZE", b"1000"),
        (b"BODY", b"8BITMIME"),
        (b"SMTPUTF8", None),
    )
    assert parse_params(b"") == ()
    assert parse_params(b"   ") == ()


@pytest.mark.parametrize(
    "rest",
    [b" =x", b" SIZE=", b" A=b=c", b" -X=1", b" K\x00=1", b" K=\x01", b" K\xc3\xa4=1"],
)
def test_malformed_params_are_501(rest: bytes) -> None:
    with pytest.raises(CommandSyntaxError) as info:
        parse_params(rest)
    assert info.value.reply.code == 501


def test_utf8_param_value_allowed() -> None:
    # RFC 6531 §3.3 lets esmtp-value carry UTF-8.
    assert parse_params(" ENVID=\u00e4".encode()) == ((b"ENVID", "\u00e4".encode()),)


# -- Reply ---------------------------------------------------------------------


def test_reply_single_and_multi_line() -> None:
    assert Reply(250, "ok").to_bytes() == b"250 ok\r\n"
    assert Reply(250, "mx\nPIPELINING\n8BITMIME").to_bytes() == (
        b"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n"  # RFC 5321 §4.2.1
    )
    assert Reply(250, "caf\u00e9").to_bytes() == "250 caf\u00e9\r\n".encode()


@pytest.mark.parametrize(("code", "text"), [(199, "x"), (600, "x"), (250, "a\rb"), (250, "\0")])
def test_reply_refuses_bad_code_or_cr(code: int, text: str) -> None:
    with pytest.raises(ValueError):
        Reply(code, text)


@given(
    st.integers(200, 599), st.text(max_size=50).filter(lambda t: "\r" not in t and "\0" not in t)
)
@settings(max_examples=200)
def test_reply_lines_cannot_be_forged(code: int, text: str) -> None:
    wire = Reply(code, text).to_bytes()
    lines = wire.split(b"\r\n")
    assert lines[-1] == b""
    assert len(lines) - 1 == text.count("\n") + 1
    for i, line in enumerate(lines[:-1]):
        sep = b" " if i == len(lines) - 2 else b"-"
        assert line.startswith(b"%d%s" % (code, sep))


def test_qmail_reply_texts() -> None:
    # reference/qmail-protocols.md §9.2, word for word.
    assert replies.MAIL_FIRST.to_bytes() == b"503 MAIL first (#5.5.1)\r\n"
    assert replies.RCPT_FIRST.to_bytes() == b"503 RCPT first (#5.5.1)\r\n"
    assert replies.BARE_LF.to_bytes() == b"451 See http://pobox.com/~djb/docs/smtplf.html.\r\n"
    assert replies.UNIMPLEMENTED.to_bytes() == b"502 unimplemented (#5.5.1)\r\n"
    assert replies.GO_AHEAD.to_bytes() == b"354 go ahead\r\n"
    assert replies.FLUSHED.to_bytes() == b"250 flushed\r\n"
