"""qmail-qmtpd and qmail-qmqpd: QMTP / QMQP on stdin/stdout, for tcpserver.

Runs as: whoever tcpserver runs it as (qmaild in a system install).
Reads:   TCPREMOTEIP, TCPREMOTEHOST, TCPREMOTEINFO, TCPLOCALIP, TCPLOCALHOST,
         RELAYCLIENT, DATABYTES from the environment; control files as the
         built-in listeners do (tcpserver has applied its own rules).
Exit:    qmail's: 0 when the client is done, 100 on a protocol violation,
         111 on a timeout or a resource problem.
"""

from __future__ import annotations

import asyncio
import os

from pyqmail.config import Home, SmtpdConfig
from pyqmail.net.peer import client_for
from pyqmail.net.stdio import FdReader, FdWriter
from pyqmail.qmtpd.policy import PackagePolicy, writer_queue
from pyqmail.qmtpd.session import serve_packages
from pyqmail.unix.logfmt import set_component


async def _run(home: Home, protocol: str) -> int:
    cfg = SmtpdConfig.load(home)
    env = dict(os.environ)
    client = client_for(env.get("TCPREMOTEIP", "unknown"), env.get("TCPLOCALIP"), {}, env)
    assert client is not None  # no rules here: tcpserver already applied its own
    policy = PackagePolicy(cfg, client, writer_queue(home.writer_socket), protocol)
    return await serve_packages(FdReader(0), FdWriter(1), policy, cfg.timeout)


def qmtpd_main() -> int:
    set_component("qmail-qmtpd")
    return asyncio.run(_run(Home.from_env(), "QMTP"))


def qmqpd_main() -> int:
    set_component("qmail-qmqpd")
    return asyncio.run(_run(Home.from_env(), "QMQP"))
