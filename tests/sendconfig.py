"""A SendConfig for unit tests: mx.example.net's, with any field overridden."""

from __future__ import annotations

import dataclasses

from pyqmail.config import SendConfig

BASE = SendConfig(
    me="mx.example.net",
    locals=frozenset({"mx.example.net"}),
    percenthack=frozenset(),
    virtualdomains={},
    envnoathost="mx.example.net",
    bouncefrom="MAILER-DAEMON",
    bouncehost="mx.example.net",
    doublebounceto="postmaster",
    doublebouncehost="mx.example.net",
    concurrencylocal=10,
    concurrencyremote=20,
    queuelifetime=604800,
)


def send_config(**over: object) -> SendConfig:
    return dataclasses.replace(BASE, **over)  # type: ignore[arg-type]
