"""send.bounce: who gets a bounce, from whom, in which format (qmail-protocols §5.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyqmail.config import Home, SendConfig
from pyqmail.formats.control import ControlError
from pyqmail.formats.envelope import Envelope
from pyqmail.formats.qsbmf import Failure
from pyqmail.send.bounce import build_bounce
from tests.sendconfig import send_config

FAIL = [Failure(b"x@example.net", b"Sorry. (#5.1.1)\n")]


def _build(cfg: SendConfig, sender: bytes) -> tuple[bytes, Envelope] | None:
    return build_bounce(
        cfg, sender=sender, birth=0.0, failures=FAIL, original=b"S: x\n\nb\n", now=0
    )


def test_single_bounce_goes_from_null_to_the_sender_verp_stripped() -> None:
    got = _build(send_config(), b"list-@lists.example-@[]")
    assert got is not None
    text, env = got
    assert env == Envelope(b"", (b"list-@lists.example",))
    assert b"\nTo: list-@lists.example\n" in text
    assert b"Hi. This is the qmail-send program at mx.example.net." in text


def test_double_bounce_goes_from_hash_to_doublebounceto() -> None:
    got = _build(send_config(doublebounceto="ops", doublebouncehost="example.org"), b"")
    assert got is not None
    text, env = got
    assert env == Envelope(b"#@[]", (b"ops@example.org",))
    assert b"but the bounce bounced!" in text


def test_triple_bounce_is_dropped() -> None:
    assert _build(send_config(), b"#@[]") is None


def test_doublebounceto_at_sign_drops_double_bounces_only() -> None:
    cfg = send_config(doublebounceto="@")
    assert _build(cfg, b"") is None
    assert _build(cfg, b"a@example.org") is not None


def test_bounceformat_dsn_switches_the_format() -> None:
    qsbmf = _build(send_config(), b"a@example.org")
    dsn = _build(send_config(bounceformat="dsn"), b"a@example.org")
    assert qsbmf is not None
    assert dsn is not None
    assert b"multipart/report" not in qsbmf[0]
    assert b"Content-Type: multipart/report; report-type=delivery-status;" in dsn[0]
    assert qsbmf[1] == dsn[1]


def test_bad_bounceformat_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    from pyqmail.cli.homeinit import init_home
    from pyqmail.cli.main import check_home

    home = Home(str(tmp_path / "q"))
    init_home(home, "localhost")
    (tmp_path / "q" / "control" / "bounceformat").write_text("html\n")
    with pytest.raises(ControlError) as err:
        SendConfig.load(home)
    assert err.value.path.endswith("control/bounceformat")
    assert any(
        "control/bounceformat:1: 'html' is not one of qsbmf, dsn" in p for p in check_home(home)
    )
    (tmp_path / "q" / "control" / "bounceformat").write_text("DSN\n")
    assert SendConfig.load(home).bounceformat == "dsn"


@pytest.mark.parametrize("fmt", ["qsbmf", "dsn"])
def test_control_bouncemaxbytes_reaches_both_formats(tmp_path: Path, fmt: str) -> None:
    from pyqmail.cli.homeinit import init_home

    home = Home(str(tmp_path / "qmail"))
    init_home(home, "mx.example.net")
    assert SendConfig.load(home).bouncemaxbytes == 0  # qmail: the whole message
    Path(home.control("bouncemaxbytes")).write_text("12\n")
    Path(home.control("bounceformat")).write_text(fmt + "\n")
    cfg = SendConfig.load(home)
    assert cfg.bouncemaxbytes == 12
    original = b"Subject: x\n" + b"body line\n" * 50
    got = build_bounce(cfg, sender=b"a@b.example", birth=0, failures=FAIL, original=original, now=0)
    assert got is not None
    text, _env = got
    assert b"only its first 11 are returned (bouncemaxbytes 12)" in text
    assert b"Return-Path: <a@b.example>\nSubject: x\n" in text
    assert b"body line" not in text
