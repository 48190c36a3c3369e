"""formats.mbox: From_ lines and mboxrd >From quoting (qmail-files §5.6)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pyqmail.formats.mbox import entry, from_line, quote_from


def test_from_line_is_qmails() -> None:
    """GMT, zero-padded day; blanks in the sender become '-'; empty -> MAILER-DAEMON."""
    assert from_line(b"a b\tc@x", 883789534) == b"From a-b-c@x Sat Jan 03 01:05:34 1998\n"
    assert from_line(b"", 0).startswith(b"From MAILER-DAEMON Thu Jan 01 ")


def test_quoting_adds_one_more_gt() -> None:
    assert quote_from(b"From x\n>From y\n>>From z\nFromage\n From a\n") == (
        b">From x\n>>From y\n>>>From z\nFromage\n From a\n"
    )


def test_entry_ends_with_an_empty_line() -> None:
    assert entry(b"H\n", b"body\n") == b"H\nbody\n\n"
    assert entry(b"H\n", b"body") == b"H\nbody\n\n"


@given(st.lists(st.sampled_from([b"From x", b">From y", b"text", b"", b">>From"]), max_size=8))
def test_unquoting_restores_the_message(lines: list[bytes]) -> None:
    """mboxrd is reversible: removing one '>' from ^>+From lines gives the original."""
    body = b"".join(ln + b"\n" for ln in lines)
    quoted = quote_from(body).split(b"\n")
    restored = [ln[1:] if ln.lstrip(b">").startswith(b"From ") else ln for ln in quoted]
    assert b"\n".join(restored) == body
