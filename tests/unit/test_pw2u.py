"""formats.pw2u: qmail-pw2u's passwd -> users/assign rules (qmail-programs §4)."""

from __future__ import annotations

import pytest

from pyqmail.formats.assign import UserMatch, parse_assign
from pyqmail.formats.control import ControlError
from pyqmail.formats.pw2u import Extras, HomeCheck, HomeState, Options, PwEntry, convert

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "alias:x:7790:2108::/var/qmail/alias:/bin/true\n"
    "joe:x:1001:100:Joe:/home/joe:/bin/sh\n"
    "Upper:x:1002:100::/home/Upper:/bin/sh\n"
    "gone:x:1003:100::/home/gone:/bin/sh\n"
    "stolen:x:1004:100::/home/stolen:/bin/sh\n"
)


def _state(pw: PwEntry) -> HomeState:
    return {"gone": HomeState.MISSING, "stolen": HomeState.NOT_OWNED}.get(pw.name, HomeState.OK)


def test_default_rules() -> None:
    """uid 0, upper-case names, missing and foreign homes are skipped; alias adds +:."""
    out = convert(PASSWD, _state)
    assert out == (
        "=alias:alias:7790:2108:/var/qmail/alias:::\n"
        "+alias-:alias:7790:2108:/var/qmail/alias:-::\n"
        "=joe:joe:1001:100:/home/joe:::\n"
        "+joe-:joe:1001:100:/home/joe:-::\n"
        "+:alias:7790:2108:/var/qmail/alias:-::\n"
        ".\n"
    )
    a = parse_assign(out)
    assert a.lookup("joe-x") == UserMatch("joe", 1001, 100, "/home/joe", "-", "x")
    assert a.lookup("nobody-here") == UserMatch(
        "alias", 7790, 2108, "/var/qmail/alias", "-", "nobody-here"
    )


def test_options_upper_no_check_and_no_extensions() -> None:
    out = convert(PASSWD, _state, Options(HomeCheck.NONE, allow_upper=True, extensions=False))
    assert "=Upper:Upper:1002" in out
    assert "=gone:gone:1003" in out
    assert "+joe-" not in out


def test_break_option_changes_the_keys_not_the_dash_field() -> None:
    """-c X: qmail-pw2u's dashcolon stays "-", so joe+ext still reads .qmail-ext."""
    out = convert(PASSWD, _state, Options(dash="+"), Extras(subusers=("sales:joe:sales:",)))
    assert "+joe+:joe:1001:100:/home/joe:-::" in out
    assert "+sales+:joe:1001:100:/home/joe:-:sales-:" in out
    assert parse_assign(out).lookup("joe+x") == UserMatch("joe", 1001, 100, "/home/joe", "-", "x")


def test_slash_option_puts_extension_files_under_dot_qmail_dash_slash() -> None:
    """-/: every dash field is "-/" (qmail's "-/:"), exact matches keep "" """
    out = convert(PASSWD, _state, Options(slash=True), Extras(subusers=("sales:joe:sales:",)))
    assert out == (
        "=alias:alias:7790:2108:/var/qmail/alias:::\n"
        "+alias-:alias:7790:2108:/var/qmail/alias:-/::\n"
        "=joe:joe:1001:100:/home/joe:::\n"
        "+joe-:joe:1001:100:/home/joe:-/::\n"
        "=sales:joe:1001:100:/home/joe:-/:sales:\n"
        "+sales-:joe:1001:100:/home/joe:-/:sales-:\n"
        "+:alias:7790:2108:/var/qmail/alias:-/::\n"
        ".\n"
    )
    a = parse_assign(out)
    assert a.lookup("joe") == UserMatch("joe", 1001, 100, "/home/joe", "", "")
    assert a.lookup("joe-x") == UserMatch("joe", 1001, 100, "/home/joe", "-/", "x")
    assert a.lookup("sales-eu") == UserMatch("joe", 1001, 100, "/home/joe", "-/", "sales-eu")
    assert a.lookup("who") == UserMatch("alias", 7790, 2108, "/var/qmail/alias", "-/", "who")


def test_missing_home_can_be_fatal() -> None:
    with pytest.raises(ControlError, match="gone is missing"):
        convert(PASSWD, _state, Options(HomeCheck.ABORT_MISSING))


def test_include_exclude_mailnames_subusers_append() -> None:
    extras = Extras(
        include=frozenset({"joe", "alias"}),
        exclude=frozenset({"alias"}),
        mailnames=("joe:joe.smith:js",),
        subusers=("sales:joe:sales:",),
        append="=extra:joe:1001:100:/home/joe:::",
    )
    out = convert(PASSWD, _state, Options(), extras)
    a = parse_assign(out)
    assert "=joe:" not in out  # replaced by its mail names; the catch-all takes "joe"
    assert a.lookup("JS") == UserMatch("joe", 1001, 100, "/home/joe", "", "")
    assert a.lookup("joe.smith-x") == UserMatch("joe", 1001, 100, "/home/joe", "-", "x")
    assert a.lookup("sales") == UserMatch("joe", 1001, 100, "/home/joe", "-", "sales")
    assert a.lookup("sales-eu") == UserMatch("joe", 1001, 100, "/home/joe", "-", "sales-eu")
    assert a.lookup("extra") is not None
    assert "=alias:" not in out  # excluded, but its catch-all remains
    assert out.endswith("=extra:joe:1001:100:/home/joe:::\n.\n")


def test_no_alias_account_is_fatal() -> None:
    with pytest.raises(ControlError, match="alias"):
        convert("joe:x:1001:100:Joe:/home/joe:/bin/sh\n", _state)


def test_bad_passwd_line_names_its_line() -> None:
    with pytest.raises(ControlError, match="stdin:2"):
        convert("alias:x:1:1::/a:/bin/sh\njoe:x:abc:1::/h:/bin/sh\n", _state, path="stdin")
