"""formats.assign: users/assign as qmail-newu compiles it (qmail-files §4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyqmail.formats.assign import UserMatch, format_assign_line, parse_assign
from pyqmail.formats.control import ControlError


def _file(*lines: str) -> str:
    return "\n".join([*lines, "."]) + "\n"


def test_exact_line_resolves_case_insensitively() -> None:
    """``=local:user:uid:gid:home:dash:ext:``; the local part matches in any case."""
    a = parse_assign(_file("=Joe:joe:1001:100:/home/joe:::"))
    assert a.lookup("JOE") == UserMatch("joe", 1001, 100, "/home/joe", "", "")
    assert a.lookup("joe-x") is None


def test_exact_beats_any_prefix() -> None:
    """An ``=`` line beats any ``+`` line, even a longer prefix."""
    a = parse_assign(
        _file(
            "+joe:plus:2:2:/p:-:pre-:",
            "=joe:exact:1:1:/e:::",
        )
    )
    match = a.lookup("joe")
    assert match is not None
    assert match.user == "exact"


def test_longer_prefix_wins() -> None:
    a = parse_assign(
        _file(
            "+j:short:1:1:/s:-::",
            "+joe-:long:2:2:/l:-:list-:",
        )
    )
    long = a.lookup("joe-news")
    short = a.lookup("jack")
    assert long is not None
    assert short is not None
    assert (long.user, long.ext) == ("long", "list-news")
    assert (short.user, short.ext) == ("short", "ack")


def test_prefix_hit_appends_the_original_case_rest_to_ext() -> None:
    """For a ``+`` hit the rest of the original-case local part is appended to ext."""
    a = parse_assign(_file("+Joe-:joe:1:1:/h:-:x-:"))
    assert a.lookup("JOE-News") == UserMatch("joe", 1, 1, "/h", "-", "x-News")


def test_prefix_covers_the_prefix_itself_and_empty_key_catches_all() -> None:
    """``+loc`` applies to ``loc`` itself; ``+:`` (empty key) is a catch-all."""
    a = parse_assign(_file("+joe:joe:1:1:/h:-::", "+:alias:7:7:/var/qmail/alias:-::"))
    me = a.lookup("joe")
    other = a.lookup("Postmaster")
    assert me is not None
    assert me.ext == ""
    assert other == UserMatch("alias", 7, 7, "/var/qmail/alias", "-", "Postmaster")


def test_first_duplicate_wins() -> None:
    """qmail-newu: among duplicates of the same key the first line wins."""
    a = parse_assign(
        _file(
            "=joe:first:1:1:/1:::",
            "=JOE:second:2:2:/2:::",
            "+p:first:1:1:/1:-::",
            "+P:second:2:2:/2:-::",
        )
    )
    assert (a.lookup("joe") or UserMatch("", 0, 0, "", "", "")).user == "first"
    assert (a.lookup("pq") or UserMatch("", 0, 0, "", "", "")).user == "first"


def test_fields_after_the_sixth_colon_are_ignored() -> None:
    a = parse_assign(_file("=joe:joe:1:1:/h:-:ext:extra:fields"))
    match = a.lookup("joe")
    assert match is not None
    assert match.ext == "ext"


def test_missing_final_dot_names_file_and_line() -> None:
    """qmail-files §4: the file must end with a line holding a single ``.``."""
    with pytest.raises(ControlError) as info:
        parse_assign("=joe:joe:1:1:/h:::\n", path="/var/qmail/users/assign")
    assert info.value.path == "/var/qmail/users/assign"
    assert info.value.line == 2
    assert "final '.'" in info.value.why
    assert str(info.value).startswith("/var/qmail/users/assign:2: ")


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("=joe:joe:1:1:/h:\n.\n", 1),  # only 5 colons after the key
        ("=ok:ok:1:1:/h:::\nxjoe:joe:1:1:/h:::\n.\n", 2),  # neither = nor +
        ("=joe:joe:x:1:/h:::\n.\n", 1),  # uid not a number
        ("=joe:joe:1:²:/h:::\n.\n", 1),  # gid: "²".isdigit() but int() refuses it
        ("=joe:joe:1:1:/h:::\n.\n=late:l:1:1:/l:::\n", 3),  # text after the '.'
        ("=jo\0e:joe:1:1:/h:::\n.\n", 1),  # NUL
        ("\n.\n", 1),  # blank line
    ],
)
def test_format_errors_name_the_line(text: str, line: int) -> None:
    with pytest.raises(ControlError) as info:
        parse_assign(text, path="assign")
    assert (info.value.path, info.value.line) == ("assign", line)


def test_empty_file_with_only_dot_has_no_users() -> None:
    assert parse_assign(".\n").lookup("anyone") is None
    assert parse_assign(".").lookup("anyone") is None


def test_exactly_six_colons_after_the_key_is_enough() -> None:
    """qmail-files §4: at least 6 colons after the key; the trailing one is optional."""
    match = parse_assign("=joe:joe:1:1:/h:-:ext\n.\n").lookup("joe")
    assert match == UserMatch("joe", 1, 1, "/h", "-", "ext")


@pytest.mark.parametrize("text", ["", "=joe:joe:1:1:/h:::", "=joe:joe:1:1:/h:::\n"])
def test_missing_dot_is_reported_as_such(text: str) -> None:
    """A file cut short says what is missing (not 'line must start with = or +')."""
    with pytest.raises(ControlError, match="missing the final"):
        parse_assign(text)


keys = st.text("abcdefgh-.", min_size=1, max_size=8)


@settings(max_examples=200)
@given(
    st.dictionaries(keys, st.integers(1, 60000), max_size=4),
    st.dictionaries(keys, st.integers(1, 60000), max_size=4),
    st.text("abcdefgh-.", max_size=12),
)
def test_lookup_follows_the_precedence_rules(
    exact: dict[str, int], prefix: dict[str, int], local: str
) -> None:
    """Model check: exact key, else the longest + key that prefixes local, ext appended."""
    lines = [
        format_assign_line("=", k, f"e{uid}", uid, uid, f"/e/{k}", "", "")
        for k, uid in exact.items()
    ]
    lines += [
        format_assign_line("+", k, f"p{uid}", uid, uid, f"/p/{k}", "-", "x")
        for k, uid in prefix.items()
    ]
    got = parse_assign(_file(*lines)).lookup(local)
    if local in exact:
        uid = exact[local]
        assert got == UserMatch(f"e{uid}", uid, uid, f"/e/{local}", "", "")
        return
    hits = [k for k in prefix if local.startswith(k)]
    if not hits:
        assert got is None
        return
    best = max(hits, key=len)
    uid = prefix[best]
    assert got == UserMatch(f"p{uid}", uid, uid, f"/p/{best}", "-", "x" + local[len(best) :])
