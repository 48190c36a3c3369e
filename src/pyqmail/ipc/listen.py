"""Listening Unix sockets for the helper daemons (clean, lspawn, rspawn)."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from pyqmail.ipc.frames import peer_uid_pid
from pyqmail.unix import accounts, durable

if TYPE_CHECKING:  # imported where used: lspawn and clean run without an event loop
    import asyncio


def unix_listener(path: str, mode: int = 0o600, backlog: int = 16) -> socket.socket:
    durable.unlink_quiet(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    lock_dir = os.stat(os.path.dirname(path))
    if lock_dir.st_mode & stat.S_IWGRP:
        # a system home: send runs under another uid of group qmail; who may
        # really talk is decided per connection by peer_allowed()
        if os.geteuid() == 0:
            os.chown(path, -1, lock_dir.st_gid)
        mode |= 0o060
    os.chmod(path, mode)
    sock.listen(backlog)
    return sock


def send_uids(path: str) -> frozenset[int]:
    """Who may use a helper's socket at path (in queue/lock/): send, root, me."""
    uids = {0, os.geteuid()}
    queue_dir = os.path.dirname(os.path.dirname(path))
    qmails = accounts.lookup("qmails")
    if qmails is not None and accounts.is_system_home(queue_dir):
        uids.add(qmails.uid)
    return frozenset(uids)


def peer_allowed(sock: socket.socket, allowed: frozenset[int]) -> bool:
    uid, _pid = peer_uid_pid(sock)
    return uid in allowed


async def wait_for_stop() -> None:
    """Return on SIGTERM or SIGINT: every component stops the same way."""
    import asyncio
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve_unix_until_stopped(
    path: str, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
) -> None:
    """Serve a helper's Unix socket to send alone, until SIGTERM/SIGINT."""
    import asyncio

    allowed = send_uids(path)

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is None or not peer_allowed(sock, allowed):
            writer.close()
            return
        await handler(reader, writer)

    server = await asyncio.start_unix_server(guarded, sock=unix_listener(path))
    await wait_for_stop()
    server.close()
