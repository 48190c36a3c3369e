"""fd 0 / fd 1 as the two halves of a connection, for programs run by tcpserver.

asyncio's pipe transports refuse regular files, and tcpserver hands over
sockets while tests and `sendmail -bs` hand over pipes or files; plain fds
work for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from pyqmail.unix import durable


class FdReader:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        with contextlib.suppress(OSError):
            os.set_blocking(fd, False)

    async def read(self, n: int) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            try:
                return os.read(self.fd, n)
            except BlockingIOError:
                pass
            ready: asyncio.Future[None] = loop.create_future()
            try:
                loop.add_reader(self.fd, ready.set_result, None)
            except PermissionError:  # a regular file: never blocks
                os.set_blocking(self.fd, True)
                return os.read(self.fd, n)
            try:
                await ready
            finally:
                loop.remove_reader(self.fd)


class FdWriter:
    """Writes go straight out; replies are small and the peer reads them."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        with contextlib.suppress(OSError):
            os.set_blocking(fd, True)

    def write(self, data: bytes) -> None:
        durable.write_all(self.fd, data)

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None

    def get_extra_info(self, name: str) -> None:
        return None
