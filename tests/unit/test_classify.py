"""send.classify: qmail-send's recipient classification and retry schedule.

qmail-files §2.2 and §3 (envnoathost, percenthack, locals, virtualdomains),
qmail-protocols §4 (retry schedule).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyqmail.config import SendConfig
from pyqmail.send.classify import classify, next_retry, strip_virtual
from tests.sendconfig import send_config


def _cfg(**over: object) -> SendConfig:
    return send_config(**{"locals": frozenset({"mx.example.net", "localhost"}), **over})


def test_envnoathost_is_appended_to_bare_recipients() -> None:
    """§3 step 1: no ``@`` -> append ``@envnoathost``."""
    assert classify(b"joe", _cfg()) == ("local", b"joe@mx.example.net")
    assert classify(b"joe", _cfg(envnoathost="elsewhere.example")) == (
        "remote",
        b"joe@elsewhere.example",
    )


def test_locals_match_case_insensitively_and_keep_the_address() -> None:
    """§3 step 3: domain in locals -> local channel, address unchanged."""
    assert classify(b"Joe@MX.Example.NET", _cfg()) == ("local", b"Joe@MX.Example.NET")


def test_locals_is_an_exact_domain_match() -> None:
    assert classify(b"joe@sub.mx.example.net", _cfg()) == ("remote", b"joe@sub.mx.example.net")


def test_percenthack_uses_the_last_percent_repeatedly() -> None:
    """§3 step 2: while the domain is in percenthack and the local part has ``%``,
    the last ``%`` becomes ``@`` and the old ``@domain`` is dropped."""
    cfg = _cfg(percenthack=frozenset({"relay.example", "inner.example"}))
    assert classify(b"a%b%inner.example@relay.example", cfg) == ("remote", b"a@b")
    assert classify(b"joe%localhost@relay.example", cfg) == ("local", b"joe@localhost")
    # domain not in percenthack: left alone
    assert classify(b"joe%localhost@other.example", cfg) == (
        "remote",
        b"joe%localhost@other.example",
    )


def test_percenthack_applies_before_locals() -> None:
    cfg = _cfg(percenthack=frozenset({"mx.example.net"}))
    assert classify(b"joe%remote.example@mx.example.net", cfg) == ("remote", b"joe@remote.example")


def test_virtualdomain_example_from_the_reference() -> None:
    """§3: ``example.org:exorg``: ``Info@example.org`` -> local ``exorg-Info@example.org``."""
    cfg = _cfg(virtualdomains={"example.org": "exorg"})
    assert classify(b"Info@example.org", cfg) == ("local", b"exorg-Info@example.org")
    assert classify(b"Info@Example.ORG", cfg) == ("local", b"exorg-Info@Example.ORG")


def test_virtual_user_beats_domain_and_suffix() -> None:
    """§2.2: keys ``user@a.b.c``, ``a.b.c``, ``.b.c``, ``.c``, then ``""``; first wins."""
    cfg = _cfg(
        virtualdomains={
            "joe@a.example.org": "vjoe",
            "a.example.org": "va",
            ".example.org": "vsuffix",
            ".org": "vorg",
            "": "vall",
        }
    )
    assert classify(b"Joe@a.example.org", cfg) == ("local", b"vjoe-Joe@a.example.org")
    assert classify(b"ann@a.example.org", cfg) == ("local", b"va-ann@a.example.org")
    assert classify(b"ann@b.example.org", cfg) == ("local", b"vsuffix-ann@b.example.org")
    assert classify(b"ann@example.org", cfg) == ("local", b"vorg-ann@example.org")
    assert classify(b"ann@example.com", cfg) == ("local", b"vall-ann@example.com")


def test_suffix_key_does_not_match_the_bare_domain() -> None:
    """``.example.org`` matches subdomains only, not ``example.org`` itself."""
    cfg = _cfg(virtualdomains={".example.org": "v"})
    assert classify(b"a@example.org", cfg) == ("remote", b"a@example.org")
    assert classify(b"a@x.example.org", cfg) == ("local", b"v-a@x.example.org")


def test_empty_prepend_means_not_virtual() -> None:
    """§2.2: an empty prepend stops the search and the address stays remote."""
    cfg = _cfg(virtualdomains={"a.example.org": "", ".example.org": "v", "": "all"})
    assert classify(b"x@a.example.org", cfg) == ("remote", b"x@a.example.org")
    assert classify(b"x@b.example.org", cfg) == ("local", b"v-x@b.example.org")


def test_locals_wins_over_virtualdomains() -> None:
    cfg = _cfg(virtualdomains={"mx.example.net": "v", "": "all"})
    assert classify(b"joe@mx.example.net", cfg) == ("local", b"joe@mx.example.net")


def test_catch_all_virtualdomain() -> None:
    """§2.2: a ``:prepend`` line catches every non-local domain."""
    cfg = _cfg(virtualdomains={"": "alias-catch"})
    assert classify(b"x@anywhere.example", cfg) == ("local", b"alias-catch-x@anywhere.example")


def test_strip_virtual_removes_the_prepend_for_bounces() -> None:
    """§3: bounce texts strip the ``exorg-`` prefix again."""
    cfg = _cfg(virtualdomains={"example.org": "exorg", ".example.com": "sub"})
    assert strip_virtual(b"exorg-Info@example.org", cfg) == b"Info@example.org"
    assert strip_virtual(b"sub-x@a.example.com", cfg) == b"x@a.example.com"
    assert strip_virtual(b"other-Info@example.org", cfg) == b"other-Info@example.org"
    assert strip_virtual(b"joe@mx.example.net", cfg) == b"joe@mx.example.net"
    assert strip_virtual(b"joe@remote.example", cfg) == b"joe@remote.example"


def test_strip_virtual_stops_at_the_first_key_found() -> None:
    """Regression (qmail's stripvdomprepend): the first key found decides. A remote
    ``sub-joe@a.example.org`` (``a.example.org:`` = not virtual) keeps its name even
    though ``.example.org:sub`` would match further down."""
    cfg = _cfg(virtualdomains={"a.example.org": "", ".example.org": "sub"})
    assert classify(b"sub-joe@a.example.org", cfg) == ("remote", b"sub-joe@a.example.org")
    assert strip_virtual(b"sub-joe@a.example.org", cfg) == b"sub-joe@a.example.org"


@settings(max_examples=200)
@given(
    st.text("abcXYZ.-", min_size=1, max_size=10).filter(lambda s: "." not in s[:1]),
    st.sampled_from(["example.org", "a.example.org", "b.example.com", "x.test"]),
)
def test_strip_virtual_undoes_classify(local: str, domain: str) -> None:
    cfg = _cfg(
        virtualdomains={"example.org": "vorg", ".example.com": "vcom", "a.example.org": "va"}
    )
    rcpt = f"{local}@{domain}".encode()
    channel, rewritten = classify(rcpt, cfg)
    if channel == "local":
        assert strip_virtual(rewritten, cfg) == rcpt


LOCAL_SCHEDULE = [100, 400, 900, 1600, 2500, 3600]
REMOTE_SCHEDULE = [400, 1600, 3600, 6400, 10000, 14400]


@pytest.mark.parametrize(
    ("channel", "schedule"), [("local", LOCAL_SCHEDULE), ("remote", REMOTE_SCHEDULE)]
)
def test_on_time_passes_follow_the_reference_table(channel: str, schedule: list[int]) -> None:
    """qmail-protocols §4: n-th retry at birth + (c*n)^2: local 100, 400, 900 s…;
    remote 400, 1600, 3600 s…; the first attempt is immediate."""
    birth = 1_700_000_000.0
    when = birth  # first attempt
    got = []
    for _ in schedule:
        when = next_retry(birth, when, channel)
        got.append(when - birth)
    assert got == schedule


def test_next_retry_uses_the_pass_start_not_results() -> None:
    """A late pass (at 1000 s, local) schedules birth + (31 + 10)^2."""
    assert next_retry(0.0, 1000.0, "local") == (31 + 10) ** 2


@pytest.mark.parametrize("channel", ["local", "remote"])
def test_last_attempt_is_about_seven_days_one_hour(channel: str) -> None:
    """qmail-protocols §4: with the defaults the final attempt is at 608400 s."""
    when = 0.0
    while when <= 604800:
        when = next_retry(0.0, when, channel)
    assert when == 608400


def test_clock_before_birth_counts_as_age_zero() -> None:
    assert next_retry(1000.0, 900.0, "local") == 1100.0


@pytest.mark.parametrize("channel", ["local", "remote"])
def test_retryunit_scales_the_schedule_without_changing_its_shape(channel: str) -> None:
    """control/retryunit (ms per schedule second): the same passes, 1000 times sooner."""
    real, fast = 0.0, 0.0
    for _ in range(8):
        real = next_retry(0.0, real, channel)
        fast = next_retry(0.0, fast, channel, unit=0.001)
        assert fast == pytest.approx(real / 1000)


def test_retryunit_with_a_late_pass() -> None:
    """A pass 1 s late in a 1 ms unit is 1000 schedule seconds late: (31 + 10)^2 ms."""
    assert next_retry(50.0, 51.0, "local", unit=0.001) == pytest.approx(50.0 + 41**2 / 1000)
