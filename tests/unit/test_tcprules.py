"""formats.tcprules: tcpserver's rules text (qmail-files §7)."""

from __future__ import annotations

import pytest

from pyqmail.formats.control import ControlError
from pyqmail.formats.tcprules import Rule, match, parse_rules

TYPICAL = """\
# the typical SMTP policy from qmail-files §7
127.:allow,RELAYCLIENT=""
192.0.2.:allow,RELAYCLIENT=""
:allow
"""


def test_typical_smtp_policy() -> None:
    rules = parse_rules(TYPICAL)
    assert match(rules, "127.0.0.1") == Rule(True, (("RELAYCLIENT", ""),))
    assert match(rules, "192.0.2.55") == Rule(True, (("RELAYCLIENT", ""),))
    assert match(rules, "198.51.100.4") == Rule(True, ())


def test_exact_ip_then_shorter_prefixes_then_empty() -> None:
    """Search order: the IP, ``a.b.c.``, ``a.b.``, ``a.``, then the empty address."""
    rules = parse_rules(
        "10.:allow,WHO=/10./\n"
        "10.1.2.:allow,WHO=/10.1.2./\n"
        "10.1.2.3:deny\n"
        "10.1.:allow,WHO=/10.1./\n"
        ":deny\n"
    )
    assert match(rules, "10.1.2.3") == Rule(False, ())
    assert match(rules, "10.1.2.4") == Rule(True, (("WHO", "10.1.2."),))
    assert match(rules, "10.1.9.9") == Rule(True, (("WHO", "10.1."),))
    assert match(rules, "10.9.9.9") == Rule(True, (("WHO", "10."),))
    assert match(rules, "11.0.0.1") == Rule(False, ())


def test_no_rule_means_none() -> None:
    """Without a matching rule tcpserver allows; match() says None."""
    assert match(parse_rules("127.:allow\n"), "10.0.0.1") is None


def test_prefix_must_end_at_a_dot() -> None:
    """``10.1`` is not a prefix rule for ``10.10.0.1``: prefixes end in a dot."""
    rules = parse_rules("10.1:deny\n10.1.:deny\n")
    assert match(rules, "10.10.0.1") is None


def test_first_duplicate_wins() -> None:
    rules = parse_rules("1.2.3.4:deny\n1.2.3.4:allow\n")
    assert match(rules, "1.2.3.4") == Rule(False, ())


def test_ipv6_address_is_an_exact_key() -> None:
    rules = parse_rules('::1:allow,RELAYCLIENT=""\n:deny\n')
    assert match(rules, "::1") == Rule(True, (("RELAYCLIENT", ""),))
    assert match(rules, "2001:db8::1") == Rule(False, ())


@pytest.mark.parametrize(
    ("line", "env"),
    [
        ('1.2.3.4:allow,A="x"', (("A", "x"),)),
        ("1.2.3.4:allow,A=/x/", (("A", "x"),)),  # any repeated character quotes
        ("1.2.3.4:allow,A='it\"s'", (("A", 'it"s'),)),
        ('1.2.3.4:allow,A="",B=/2/,C=#a,b#', (("A", ""), ("B", "2"), ("C", "a,b"))),
        ('1.2.3.4:allow,RELAYCLIENT="@fixme"', (("RELAYCLIENT", "@fixme"),)),
    ],
)
def test_env_values_with_any_quote_character(line: str, env: tuple[tuple[str, str], ...]) -> None:
    """§7: ``,VAR="value"``; any repeated character may replace the quotes."""
    assert parse_rules(line + "\n")["1.2.3.4"] == Rule(True, env)


@pytest.mark.parametrize(
    "line",
    [
        '1.2.3.4:allow,GREETING="x:deny"',
        "1.2.3.4:allow,X=y:deny",  # quote char y: the value is ":den"
        '1.2.3.4:allow,A=":allow",B="z"',
    ],
)
def test_action_words_inside_values_do_not_end_the_address(line: str) -> None:
    """Regression: the address ends at the first ``:allow``/``:deny``, not the last."""
    rules = parse_rules(line + "\n")
    assert list(rules) == ["1.2.3.4"]
    assert rules["1.2.3.4"].allow


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("127.:allow\n10.:permit\n", 2),  # unknown instruction
        ("# c\n\n127.0.0.1\n", 3),  # no action at all
        ('127.:allow,RELAYCLIENT="x\n', 1),  # unterminated value
        ("127.:allow,RELAYCLIENT\n", 1),  # no =value
        ('127.:allow,A="x"B="y"\n', 1),  # missing comma
        ("127.:allow,=/x/\n", 1),  # empty name
    ],
)
def test_errors_name_file_and_line(text: str, line: int) -> None:
    """Config errors name the file and line (STYLE e)."""
    with pytest.raises(ControlError) as info:
        parse_rules(text, path="/etc/tcp.smtp")
    assert (info.value.path, info.value.line) == ("/etc/tcp.smtp", line)
    assert str(info.value).startswith(f"/etc/tcp.smtp:{line}: ")
