"""control/tlsdestinations: parsing and lookup (issue #6)."""

from __future__ import annotations

import pytest

from pyqmail.formats.control import ControlError
from pyqmail.formats.tlspolicy import (
    DEFAULT_POLICY,
    TlsLevel,
    TlsPolicy,
    parse_tlsdestinations,
    policy_for,
)

TEXT = """# comment
example.com:verify
.bank.example:verify:/etc/ca.pem
partner.example:ENCRYPT
broken.example:none
:may
"""


def test_lookup_order_is_smtproutes_order() -> None:
    rules = parse_tlsdestinations(TEXT, path="tlsdestinations")
    assert policy_for("Example.COM", rules) == TlsPolicy(TlsLevel.VERIFY)
    assert policy_for("mx.example.com", rules).level is TlsLevel.MAY  # exact names only
    assert policy_for("a.b.bank.example", rules) == TlsPolicy(TlsLevel.VERIFY, "/etc/ca.pem")
    assert policy_for("partner.example", rules).required
    assert policy_for("broken.example", rules).level is TlsLevel.NONE
    assert policy_for("other.org", rules) == DEFAULT_POLICY
    assert policy_for("other.org", {}) == DEFAULT_POLICY


@pytest.mark.parametrize(
    ("text", "line", "why"),
    [
        ("ok.example:may\nbad.example\n", 2, "expected domain:level"),
        ("x.example:sometimes\n", 1, "unknown level"),
        ("x.example:may:/ca.pem\n", 1, "only makes sense with verify"),
    ],
)
def test_errors_name_the_line(text: str, line: int, why: str) -> None:
    with pytest.raises(ControlError) as err:
        parse_tlsdestinations(text, path="control/tlsdestinations")
    assert err.value.line == line
    assert why in str(err.value)
    assert str(err.value).startswith(f"control/tlsdestinations:{line}: ")


@pytest.mark.parametrize(
    ("name", "text", "ok"),
    [
        ("tlsdestinations", "a.example:verify:/ca.pem\n:may\n", True),
        ("tlsdestinations", "a.example:sure\n", False),
        ("outgoingip", "192.0.2.1\n2001:db8::1\n", True),
        ("notipme", "127.0.0.0/8\n", True),
        ("moreipme", "mx.example\n", False),
        ("smtpport", "2525\n", True),
        ("smtpport", "70000\n", False),
        ("remoteidletime", "0\n", True),
    ],
)
def test_check_knows_the_remote_control_files(name: str, text: str, ok: bool) -> None:
    from pyqmail.controlfiles import BY_NAME, check_text

    assert (check_text(BY_NAME[name], text, name) == []) is ok
