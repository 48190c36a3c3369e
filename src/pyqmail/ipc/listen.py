"""Listening Unix sockets for the helper daemons (clean, lspawn, rspawn)."""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable

from pyqmail.unix import durable


def unix_listener(path: str, mode: int = 0o600, backlog: int = 16) -> socket.socket:
    durable.unlink_quiet(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, mode)
    sock.listen(backlog)
    return sock


async def wait_for_stop() -> None:
    """Return on SIGTERM or SIGINT: every component stops the same way."""
    import asyncio
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_unix_until_stopped(path: str, handler: Callable[..., Awaitable[None]]) -> None:
    """Serve a helper's Unix socket until SIGTERM/SIGINT."""
    import asyncio

    server = await asyncio.start_unix_server(handler, sock=unix_listener(path))
    await wait_for_stop()
    server.close()
