"""formats.address: split, domain_of and VERP (qmail-protocols §5.1, §6)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyqmail.formats.address import domain_of, split_at_last_at, strip_verp, verp_sender


def test_split_at_last_at() -> None:
    assert split_at_last_at(b'"a@b"@example.org') == (b'"a@b"', b"example.org")
    assert split_at_last_at(b"postmaster") == (b"postmaster", None)
    assert split_at_last_at(b"a@") == (b"a", b"")


def test_domain_of_is_lowercased_text_after_last_at() -> None:
    assert domain_of(b"Joe@Mx.Example.NET") == "mx.example.net"
    assert domain_of(b"joe") == ""


def test_verp_expansion_from_the_reference() -> None:
    """qmail-protocols §6: ``p-@h-@[]`` + recipient ``r@rh`` -> ``p-r=rh@h``."""
    assert verp_sender(b"p-@h-@[]", b"r@rh") == b"p-r=rh@h"
    assert (
        verp_sender(b"list-owner-@lists.example.org-@[]", b"bob@example.net")
        == b"list-owner-bob=example.net@lists.example.org"
    )


def test_verp_uses_the_last_at_of_the_recipient() -> None:
    assert verp_sender(b"p-@h-@[]", b'"a@b"@rh') == b'p-"a@b"=rh@h'


@pytest.mark.parametrize(
    ("sender", "rcpt"),
    [
        (b"p-@h-@[]", b"no-at-sign"),  # recipient without @: left alone
        (b"p-h-@[]", b"r@rh"),  # marker without the inner @: left alone
        (b"-@[]", b"r@rh"),
        (b"p@h", b"r@rh"),  # no marker at all
        (b"", b"r@rh"),  # bounce sender
        (b"#@[]", b"r@rh"),  # double-bounce sender
    ],
)
def test_verp_leaves_other_senders_alone(sender: bytes, rcpt: bytes) -> None:
    assert verp_sender(sender, rcpt) == sender


@settings(max_examples=200)
@given(
    st.binary(max_size=20).filter(lambda b: b"@" not in b),
    st.binary(max_size=20).filter(lambda b: b"@" not in b),
    st.binary(max_size=20),
    st.binary(max_size=20).filter(lambda b: b"@" not in b),
)
def test_verp_property(prefix: bytes, host: bytes, rlocal: bytes, rhost: bytes) -> None:
    sender = prefix + b"-@" + host + b"-@[]"
    got = verp_sender(sender, rlocal + b"@" + rhost)
    assert got == prefix + b"-" + rlocal + b"=" + rhost + b"@" + host


def test_strip_verp_gives_the_bounce_recipient() -> None:
    """qmail-protocols §5.1: a bounce to ``list-@host-@[]`` goes to ``list-@host``."""
    assert strip_verp(b"list-@host-@[]") == b"list-@host"
    assert strip_verp(b"joe@example.org") == b"joe@example.org"
    assert strip_verp(b"") == b""
