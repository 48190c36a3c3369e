"""STLS's context: control/servercert.pem (and serverkey.pem), as smtpd loads them."""

from __future__ import annotations

import os
import ssl

from pyqmail.config import Pop3Config
from pyqmail.net.tls import server_context
from pyqmail.unix.logfmt import log


def load_context(cfg: Pop3Config) -> ssl.SSLContext:
    """The context; OSError or ssl.SSLError when the files are unusable."""
    key = cfg.serverkey if os.path.exists(cfg.serverkey) else None
    return server_context(cfg.servercert, key)


def stls_context(cfg: Pop3Config) -> ssl.SSLContext | None:
    """None (STLS not offered) without a certificate or with an unusable one (logged)."""
    if not os.path.exists(cfg.servercert):
        return None
    try:
        return load_context(cfg)
    except (OSError, ssl.SSLError) as exc:
        log(f"warning: {cfg.servercert} unusable, no STLS: {exc}")
        return None
