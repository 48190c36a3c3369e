"""formats.dotqmail: which .qmail file applies and what each line means (qmail-files §5)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyqmail.formats.dotqmail import (
    Comment,
    Forward,
    Instruction,
    Maildir,
    Mbox,
    Program,
    candidate_files,
    parse_line,
)


def _names(dash: str, ext: str) -> list[str]:
    return [name for name, _ in candidate_files(dash, ext)]


def test_search_order_for_ext_a_b_c() -> None:
    """§5.1: ``.qmail-a-b-c``, ``.qmail-a-b-default``, ``.qmail-a-default``, ``.qmail-default``."""
    assert candidate_files("-", "a-b-c") == [
        (".qmail-a-b-c", None),
        (".qmail-a-b-default", "c"),
        (".qmail-a-default", "b-c"),
        (".qmail-default", "a-b-c"),
    ]


def test_search_order_for_ext_ending_in_dash() -> None:
    """§5.1: ext ``a-``: ``.qmail-a-``, ``.qmail-a-default`` (DEFAULT empty), ``.qmail-default``."""
    assert candidate_files("-", "a-") == [
        (".qmail-a-", None),
        (".qmail-a-default", ""),
        (".qmail-default", "a-"),
    ]


def test_bare_user_tries_dot_qmail_then_the_odd_qmaildefault() -> None:
    """§5.1: dash "" gives ``.qmail`` and, by the general rule, ``.qmaildefault``."""
    assert candidate_files("", "") == [(".qmail", None), (".qmaildefault", "")]


def test_safeext_lowercases_and_maps_dot_to_colon_but_default_keeps_case() -> None:
    """§5.1: ``john.doe`` -> ``.qmail-john:doe``; EXT/DEFAULT keep the original."""
    assert candidate_files("-", "John.Doe") == [
        (".qmail-john:doe", None),
        (".qmail-default", "John.Doe"),
    ]
    assert candidate_files("-", "Lists-Qmail.Dev") == [
        (".qmail-lists-qmail:dev", None),
        (".qmail-lists-default", "Qmail.Dev"),
        (".qmail-default", "Lists-Qmail.Dev"),
    ]


def test_literal_ext_ending_in_default_sets_default() -> None:
    """§5.1: DEFAULT is also set when the literal ext ends in ``default``."""
    assert candidate_files("-", "foo-default") == [
        (".qmail-foo-default", "default"),
        (".qmail-default", "foo-default"),
    ]
    assert candidate_files("-", "default") == [(".qmail-default", "default")]


def test_assign_dash_is_used_verbatim() -> None:
    """users/assign may give any dash (e.g. ``-`` + ext prefix ``list-``)."""
    assert _names("-", "list-x") == [".qmail-list-x", ".qmail-list-default", ".qmail-default"]


@settings(max_examples=200)
@given(st.sampled_from(["", "-"]), st.text("abAB-.x", max_size=10))
def test_candidates_follow_the_general_rule(dash: str, ext: str) -> None:
    """First the exact safeext, then ``P + default`` for each prefix P that is empty
    or ends in ``-``, longest first; DEFAULT is the original-case rest of ext."""
    safe = ext.lower().replace(".", ":")
    got = candidate_files(dash, ext)
    assert got[0][0] == f".qmail{dash}{safe}"
    expected = [
        (f".qmail{dash}{safe[:cut]}default", ext[cut:])
        for cut in range(len(safe), -1, -1)
        if cut == 0 or safe[cut - 1] == "-"
    ]
    assert got[1:] == [c for c in expected if c[0] != got[0][0]]
    for name, default in got:
        if default is not None:
            assert name == f".qmail{dash}{safe[: len(ext) - len(default)]}default"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("# comment", Comment()),
        ("", Comment()),
        ("   \t", Comment()),  # blank after stripping trailing blanks
        ("+list", Comment()),  # reserved; sets forward-only elsewhere
        ("|preline procmail", Program("preline procmail")),
        ("| exit 99 \t", Program(" exit 99")),
        ("./Maildir/", Maildir("./Maildir/")),
        ("/var/mail/joe/", Maildir("/var/mail/joe/")),
        ("./Mailbox", Mbox("./Mailbox")),
        ("/var/spool/mail/joe  ", Mbox("/var/spool/mail/joe")),
        ("&joe@example.org", Forward("joe@example.org")),
        ("joe@example.org", Forward("joe@example.org")),
        ("&-dash@example.org", Forward("-dash@example.org")),
    ],
)
def test_parse_line_by_first_character(line: str, expected: Instruction) -> None:
    """§5.3: # comment, | program, ./ or / maildir (ends in /) or mbox, & or else forward;
    trailing spaces and tabs are stripped."""
    assert parse_line(line) == expected
