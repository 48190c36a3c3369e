"""Listening Unix sockets for the helper daemons (clean, lspawn, rspawn)."""

from __future__ import annotations

import os
import socket

from pyqmail.unix import durable


def unix_listener(path: str, mode: int = 0o600, backlog: int = 16) -> socket.socket:
    durable.unlink_quiet(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, mode)
    sock.listen(backlog)
    return sock
