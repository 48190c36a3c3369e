"""formats.userscdb: qmail-newu's users/cdb layout and qmail-lspawn's lookup (qmail-files §4)."""

from __future__ import annotations

import io

import cdblib
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyqmail.formats.assign import UserMatch, parse_assign
from pyqmail.formats.userscdb import UsersCdbError, lookup, parse_value, records


def _cdb(assign_text: str) -> cdblib.Reader:
    buf = io.BytesIO()
    writer = cdblib.Writer(buf)
    for key, value in records(parse_assign(assign_text)):
        writer.put(key, value)
    writer.finalize()
    return cdblib.Reader(data=buf.getvalue())


def test_keys_and_values_are_qmails() -> None:
    """``=`` key ``!local\\0``, ``+`` key ``!loc``, value six NUL-ended fields,
    the empty key lists the last bytes of the ``+`` keys."""
    recs = dict(records(parse_assign("=Joe:joe:1:2:/h:::\n+list-:joe:1:2:/h:-:l-:\n.\n")))
    assert recs[b"!joe\0"] == b"joe\x001\x002\x00/h\x00\x00\x00"
    assert recs[b"!list-"] == b"joe\x001\x002\x00/h\x00-\x00l-\x00"
    assert recs[b""] == b"-"


def test_cdb_lookup_through_a_real_cdb_file() -> None:
    r = _cdb("=joe:joe:1:1:/j:::\n+joe-:joe:1:1:/j:-::\n+:alias:7:7:/a:-::\n.\n")
    assert lookup(r.get, b"JOE") == UserMatch("joe", 1, 1, "/j", "", "")
    assert lookup(r.get, b"joe-News") == UserMatch("joe", 1, 1, "/j", "-", "News")
    assert lookup(r.get, b"Other") == UserMatch("alias", 7, 7, "/a", "-", "Other")


def test_no_match_without_a_catch_all() -> None:
    r = _cdb("=joe:joe:1:1:/j:::\n.\n")
    assert lookup(r.get, b"jim") is None


@pytest.mark.parametrize(
    "value",
    [b"joe\x001\x001\x00/h\x00\x00", b"joe\x00x\x001\x00/h\x00\x00\x00", b"", b"a\x00" * 9],
)
def test_malformed_records_raise_our_error(value: bytes) -> None:
    with pytest.raises(UsersCdbError):
        parse_value(value)


_KEY = st.text(alphabet="ab-", max_size=4)


@given(
    st.lists(st.tuples(st.sampled_from("=+"), _KEY, st.integers(1, 9)), max_size=8),
    st.lists(st.text(alphabet="aAb-", max_size=6), min_size=1, max_size=6),
)
def test_cdb_lookup_agrees_with_reading_users_assign(
    lines: list[tuple[str, str, int]], locals_: list[str]
) -> None:
    """The compiled cdb answers exactly as users/assign read directly (first line wins)."""
    text = "".join(f"{k}{key}:u{uid}:{uid}:{uid}:/h{uid}:-:e{uid}:\n" for k, key, uid in lines)
    assign = parse_assign(text + ".\n")
    reader = _cdb(text + ".\n")
    for local in locals_:
        assert lookup(reader.get, local.encode()) == assign.lookup(local)
