"""formats.control: qmail's line / list / integer readers (qmail-files §2, §2.2)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyqmail.formats.control import (
    ControlError,
    check_int,
    domain_keys,
    parse_colon_map,
    parse_int,
    parse_line,
    parse_list,
)

# -- line reader ---------------------------------------------------------------


def test_line_missing_file_gives_default() -> None:
    assert parse_line(None, "fallback") == "fallback"
    assert parse_line(None, None) is None


def test_line_takes_first_line_without_trailing_blanks() -> None:
    """Line reader: first line only, trailing spaces/tabs/newline removed."""
    assert parse_line("mx.example.net \t\nsecond\n", None) == "mx.example.net"


def test_line_has_no_comment_handling_and_keeps_leading_blanks() -> None:
    assert parse_line("# not a comment\n", None) == "# not a comment"
    assert parse_line("  lead\n", None) == "  lead"


def test_line_existing_empty_file_is_empty_not_default() -> None:
    """An existing file wins over the default, even when empty (config.py falls back to me)."""
    assert parse_line("", "fallback") == ""


# -- list reader ---------------------------------------------------------------


def test_list_drops_blank_and_comment_lines_and_trailing_whitespace() -> None:
    text = "# comment\nexample.com  \n\n\t\n.example.org\t\nlast-without-newline"
    assert parse_list(text) == ["example.com", ".example.org", "last-without-newline"]


def test_list_missing_file_is_empty() -> None:
    assert parse_list(None) == []


def test_list_only_leading_hash_is_a_comment() -> None:
    assert parse_list("a#b\n #c\n") == ["a#b", " #c"]


# -- integer reader ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, 77),  # missing file keeps the default
        ("", 77),
        ("abc\n", 77),  # garbage keeps the default
        ("-5\n", 77),  # unsigned only
        (" 12\n", 77),  # scan_ulong does not skip leading blanks
        ("\n12\n", 77),  # first line only
        ("²\n", 77),  # str.isdigit() says yes; int() would raise
        ("12\n", 12),
        ("12 \t\n", 12),  # trailing whitespace
        ("12abc\n", 12),  # digits up to the first non-digit
        ("0\n", 0),
        ("604800", 604800),  # no final newline
    ],
)
def test_int_reader_is_qmail_scan_ulong(text: str | None, expected: int) -> None:
    """qmail-files §2: missing file or text not starting with a digit keeps the default."""
    assert parse_int(text, 77) == expected


@settings(max_examples=200)
@given(st.text(max_size=30))
def test_int_reader_never_raises(text: str) -> None:
    assert parse_int(text, 5) >= 0


# -- strict integer check --------------------------------------------------------


def test_check_int_accepts_in_range() -> None:
    assert check_int("20 \n", path="control/concurrencyremote", lo=0, hi=120) == 20


@pytest.mark.parametrize("text", ["abc\n", "", "-1\n", "1x\n", "²\n", "١٢\n"])
def test_check_int_garbage_names_file_and_line(text: str) -> None:
    """Config errors name the file and line (STYLE e); non-ASCII digits are garbage."""
    with pytest.raises(ControlError) as info:
        check_int(text, path="control/databytes", lo=0, hi=10**9)
    assert str(info.value).startswith("control/databytes:1: ")
    assert info.value.path == "control/databytes"
    assert info.value.line == 1


def test_check_int_out_of_range_names_file_and_line() -> None:
    with pytest.raises(ControlError, match=r"^control/concurrencylocal:1: 121 is outside 0\.\.120"):
        check_int("121\n", path="control/concurrencylocal", lo=0, hi=120)


def test_control_error_is_a_value_error_with_fields() -> None:
    err = ControlError("users/assign", 7, "bad")
    assert isinstance(err, ValueError)
    assert (err.path, err.line, err.why) == ("users/assign", 7, "bad")
    assert str(err) == "users/assign:7: bad"


@contextlib.contextmanager
def _passthrough() -> Iterator[None]:
    yield


def test_control_error_survives_a_context_manager() -> None:
    """Regression: a frozen slotted dataclass exception broke contextlib's __exit__,
    which assigns __traceback__ (TypeError instead of the ControlError)."""
    with pytest.raises(ControlError), _passthrough():
        raise ControlError("control/me", 1, "boom")


# -- colon maps ------------------------------------------------------------------


def test_colon_map_last_duplicate_wins_and_keys_are_case_insensitive() -> None:
    """qmail-files §2: colon-keyed maps: last duplicate wins, lookups ignore case."""
    text = "Example.ORG:first\nexample.org:second\n"
    assert parse_colon_map(text) == {"example.org": "second"}


def test_colon_map_value_keeps_later_colons_and_case() -> None:
    """smtproutes values are ``relay:port``; only the first colon splits."""
    got = parse_colon_map(".example.com:Relay.Example.NET:2525\n:smarthost\n")
    assert got == {".example.com": "Relay.Example.NET:2525", "": "smarthost"}


def test_colon_map_ignores_lines_without_colon_and_comments() -> None:
    assert parse_colon_map("nocolon\n# a:b\n\nx.org:\n") == {"x.org": ""}
    assert parse_colon_map(None) == {}


# -- domain suffix order ---------------------------------------------------------


def test_domain_keys_order() -> None:
    """qmail-files §2.2: ``a.b.c`` tries ``a.b.c``, ``.b.c``, ``.c`` (longest first)."""
    assert domain_keys("a.b.c") == ["a.b.c", ".b.c", ".c"]
    assert domain_keys("localhost") == ["localhost"]


@settings(max_examples=100)
@given(st.lists(st.text("abcxyz-", min_size=1, max_size=5), min_size=1, max_size=5))
def test_domain_keys_are_dot_suffixes_longest_first(labels: list[str]) -> None:
    domain = ".".join(labels)
    keys = domain_keys(domain)
    assert keys[0] == domain
    assert all(domain.endswith(k) and k.startswith(".") for k in keys[1:])
    assert [len(k) for k in keys] == sorted((len(k) for k in keys), reverse=True)
    assert len(keys) == len(labels)
