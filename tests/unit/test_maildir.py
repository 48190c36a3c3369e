"""formats.maildir: unique names (qmail-protocols §8.2, cr.yp.to/proto/maildir.html)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pyqmail.formats.maildir import delivery_name, safe_host, unique_of


def test_safe_host_escapes_slash_and_colon() -> None:
    """§8.2: in the host part ``/`` becomes ``\\057`` and ``:`` becomes ``\\072``."""
    assert safe_host("mx.example.net") == "mx.example.net"
    assert safe_host("a/b:c") == "a\\057b\\072c"


def test_delivery_name_is_deterministic_per_message_and_recipient() -> None:
    """DESIGN 1a: a retried delivery computes the same name and finds its own copy."""
    name = delivery_name(1710231302, 26902, 3, "mx.example.net")
    assert name == "1710231302.Q26902R3.mx.example.net"
    assert name == delivery_name(1710231302, 26902, 3, "mx.example.net")
    assert name != delivery_name(1710231302, 26902, 4, "mx.example.net")
    assert name != delivery_name(1710231303, 26902, 3, "mx.example.net")


@settings(max_examples=200)
@given(
    st.integers(0, 2**40),
    st.integers(0, 2**40),
    st.integers(0, 10**5),
    st.text(min_size=1, max_size=30),
)
def test_delivery_name_is_a_legal_maildir_name(birth: int, msg: int, idx: int, host: str) -> None:
    """§8.2: three dot-separated parts; no ``/`` or ``:``; never starts with ``.``."""
    name = delivery_name(birth, msg, idx, host)
    assert "/" not in name
    assert ":" not in name
    assert not name.startswith(".")
    assert name.split(".", 2)[:2] == [str(birth), f"Q{msg}R{idx}"]
    assert unique_of(name + ":2,S") == name


def test_unique_of_strips_the_info_suffix() -> None:
    """§8.3: a reader renames new/X to cur/X:2,FLAGS; X is what stays unique."""
    assert unique_of("123.Q1R0.host:2,S") == "123.Q1R0.host"
    assert unique_of("123.Q1R0.host:2,") == "123.Q1R0.host"
    assert unique_of("123.Q1R0.host") == "123.Q1R0.host"
