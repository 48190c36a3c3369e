"""A client link from send to a helper process over a Unix socket.

Requests and replies are NUL-joined fields in netstrings; the first field of
both is a request id, so replies may come back in any order. When the helper
dies the link reports every unanswered request as lost and reconnects.

Requests asked in one loop turn go out in one write at its end: one
syscall instead of one per request, and the helper reads them together
(clean then covers them with one sync).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from pyqmail.formats import netstring
from pyqmail.ipc.frames import pack, read_frame
from pyqmail.unix.logfmt import log

RECONNECT_S = 0.2


class Link:
    def __init__(
        self,
        name: str,
        path: str,
        on_reply: Callable[[list[bytes]], None],
        on_lost: Callable[[list[bytes]], None],
        on_up: Callable[[], None],
    ) -> None:
        self.name = name
        self.path = path
        self._on_reply = on_reply
        self._on_lost = on_lost
        self._on_up = on_up
        self._writer: asyncio.StreamWriter | None = None
        self._outstanding: set[bytes] = set()
        self._task: asyncio.Task[None] | None = None
        self._pending: list[bytes] = []  # frames of this loop turn, not yet written
        self._flush_scheduled = False

    @property
    def up(self) -> bool:
        return self._writer is not None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._writer:
            self._flush()
            self._writer.close()

    def send(self, *fields: bytes) -> bool:
        if self._writer is None:
            return False
        self._outstanding.add(fields[0])
        self._pending.append(pack(*fields))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        if pending and self._writer is not None:
            self._writer.write(b"".join(pending))

    async def _run(self) -> None:
        warned = False
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.path)
            except OSError:
                if not warned:
                    log(f"warning: waiting for {self.name} at {self.path}")
                    warned = True
                await asyncio.sleep(RECONNECT_S)
                continue
            warned = False
            self._writer = writer
            self._on_up()
            try:
                while True:
                    payload = await read_frame(reader)
                    if payload is None:
                        break
                    fields = payload.split(b"\0")
                    self._outstanding.discard(fields[0])
                    self._on_reply(fields)
            except (OSError, asyncio.IncompleteReadError, netstring.NetstringError) as exc:
                log(f"warning: lost {self.name}: {exc}")
            self._writer = None
            self._pending = []  # never written: among the lost below
            writer.close()
            lost, self._outstanding = list(self._outstanding), set()
            if lost:
                log(f"warning: {self.name} went away with {len(lost)} request(s) unanswered")
                self._on_lost(lost)
            await asyncio.sleep(RECONNECT_S)
