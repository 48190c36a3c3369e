"""The two stream halves every server session reads and writes.

asyncio's StreamReader/StreamWriter, the fd 0/1 pair of a server under
tcpserver (net/stdio.py) and the TLS layer (net/tls.py) all fit them, so
one session loop serves every transport.
"""

from __future__ import annotations

from typing import Protocol

READ_BYTES = 65536


class Reader(Protocol):
    async def read(self, n: int) -> bytes: ...


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...
