"""control/servercert.pem: TLS 1.2 at least, reloaded when it changes, checked by pyqmail check."""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import trustme

from pyqmail.cli.main import check_home
from pyqmail.config import Home
from pyqmail.net.tls import ContextCache, server_context
from tests.harness import init_home


def test_server_context_refuses_below_tls_1_2(tmp_path: Path) -> None:
    pem = tmp_path / "servercert.pem"
    trustme.CA().issue_cert("mx.example").private_key_and_cert_chain_pem.write_to_path(str(pem))
    ctx = server_context(str(pem))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_context_cache_follows_the_file(tmp_path: Path) -> None:
    pem = tmp_path / "servercert.pem"
    cache = ContextCache(str(pem))
    assert cache.get() is None  # no certificate: no STARTTLS
    trustme.CA().issue_cert("mx.example").private_key_and_cert_chain_pem.write_to_path(str(pem))
    first = cache.get()
    assert first is not None
    assert cache.get() is first
    trustme.CA().issue_cert("mx.example").private_key_and_cert_chain_pem.write_to_path(str(pem))
    os.utime(pem, ns=(1, 1))  # a renewed certificate, whatever the clock's resolution
    assert cache.get() is not first


def test_pyqmail_check_reports_an_unusable_certificate(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    (home / "control" / "servercert.pem").write_text("not a certificate\n")
    (home / "control" / "maxrcpt").write_text("0\n")
    problems = check_home(Home(str(home)))
    assert any("servercert.pem:0: unusable for STARTTLS" in p for p in problems), problems
    assert any(p.startswith(f"{home}/control/maxrcpt:1: 0 is outside") for p in problems)


def test_pyqmail_check_reports_world_readable_keys(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    pem = home / "control" / "servercert.pem"
    trustme.CA().issue_cert("mx.example").private_key_and_cert_chain_pem.write_to_path(str(pem))
    pem.chmod(0o644)
    problems = check_home(Home(str(home)))
    assert f"{pem}:0: holds a private key but others may read it (chmod o-r)" in problems
    pem.chmod(0o640)
    assert not [p for p in check_home(Home(str(home))) if "servercert" in p]
