"""qmail-smtpd: SMTP on stdin/stdout, for tcpserver (ucspi-tcp) or inetd.

Runs as: whoever tcpserver runs it as (qmaild in a system install).
Reads:   TCPREMOTEIP, TCPREMOTEHOST, TCPREMOTEINFO, TCPLOCALIP, TCPLOCALHOST,
         RELAYCLIENT, DATABYTES, QMAILQUEUE from the environment; control
         files as the built-in listener does (STARTTLS with
         control/servercert.pem, TLS done over fd 0/1 in memory).
Limits:  connections per host and overall are tcpserver's (-c, tcprules).
Exit:    0 after QUIT, 1 on EOF, read error or timeout (qmail-smtpd's codes).
"""

from __future__ import annotations

import asyncio
import os

from pyqmail.config import Home, SmtpdConfig
from pyqmail.ipc import lookup
from pyqmail.net.peer import client_for
from pyqmail.net.stdio import FdReader, FdWriter
from pyqmail.routing import LocalView
from pyqmail.smtpd.policy import SmtpPolicy
from pyqmail.smtpd.server import queue_for, service_for
from pyqmail.smtpd.session import serve_smtp
from pyqmail.unix.logfmt import set_component


async def _run(home: Home) -> int:
    reader, writer = FdReader(0), FdWriter(1)
    cfg = SmtpdConfig.load(home)
    env = dict(os.environ)
    client = client_for(env.get("TCPREMOTEIP", "unknown"), env.get("TCPLOCALIP"), {}, env)
    assert client is not None  # no rules here: tcpserver already applied its own
    local = LocalView(home) if cfg.rcptcheck else None
    service = service_for(home, cfg, submission=False, local=local)
    policy = SmtpPolicy(cfg, client, queue_for(client, home), service)
    try:
        await serve_smtp(reader, writer, policy)
    finally:
        lookup.close_all()
    return 0 if policy.quit_seen else 1


def main() -> int:
    set_component("qmail-smtpd")
    return asyncio.run(_run(Home.from_env()))


if __name__ == "__main__":
    raise SystemExit(main())
