"""Idle SMTP connections kept for the next message to the same host.

Beyond qmail (qmail-known-issues §4.6): the main lever on bulk speed. A
session goes back here after a message if it is still in a clean state and
is taken by the next delivery to the same address, port and TLS policy.
Bounded three ways: control/remoteidletime (seconds a connection may sit
idle; 0 turns reuse off), control/remoteidlemax (idle connections kept in
all; the oldest goes first) and MAX_AGE_S (a connection's whole life, as
Postfix's smtp_connection_reuse_time_limit). Each session is used by one
delivery at a time: it is either in the pool or held by a delivery.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Hashable

from pyqmail.remote.smtp import Session

MAX_AGE_S = 300.0
REAP_EVERY_S = 1.0
CLOSE_WAIT_S = 2.0


class Pool:
    def __init__(self, idle_s: float, max_idle: int) -> None:
        self.idle_s = idle_s
        self.max_idle = max_idle
        self._idle: OrderedDict[int, tuple[Hashable, Session]] = OrderedDict()
        self._seq = 0
        self._reaper: asyncio.Task[None] | None = None
        self.opened = 0  # connections made, for logs and tests
        self.reused = 0

    @property
    def enabled(self) -> bool:
        return self.idle_s > 0 and self.max_idle > 0

    def _fresh(self, s: Session, now: float) -> bool:
        return s.usable and now - s.idle_since < self.idle_s and now - s.opened < MAX_AGE_S

    def take(self, key: Hashable) -> Session | None:
        """The most recently parked usable session for key, or None."""
        now = time.monotonic()
        for slot in reversed(self._idle):
            k, s = self._idle[slot]
            if k != key:
                continue
            del self._idle[slot]
            if self._fresh(s, now):
                self.reused += 1
                return s
            s.close()
        return None

    def put(self, key: Hashable, s: Session) -> None:
        if not self.enabled or not s.usable or time.monotonic() - s.opened >= MAX_AGE_S:
            s.close()
            return
        s.idle_since = time.monotonic()
        self._seq += 1
        self._idle[self._seq] = (key, s)
        while len(self._idle) > self.max_idle:
            _slot, (_k, old) = self._idle.popitem(last=False)
            old.close()
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """Close connections idle too long, so servers are not left waiting."""
        while self._idle:
            await asyncio.sleep(REAP_EVERY_S)
            now = time.monotonic()
            for slot, (_k, s) in list(self._idle.items()):
                if not self._fresh(s, now):
                    del self._idle[slot]
                    s.close()

    async def close_all(self, timeout: float = CLOSE_WAIT_S) -> None:
        """QUIT every idle connection and give them a moment to go (shutdown)."""
        sessions = [s for _k, s in self._idle.values()]
        self._idle.clear()
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for s in sessions:
            s.close()
        if sessions:
            waits = [asyncio.ensure_future(s.wait_closed()) for s in sessions]
            _done, pending = await asyncio.wait(waits, timeout=timeout)
            for s, w in zip(sessions, waits, strict=True):
                if w in pending:
                    w.cancel()
                    s.broken = True
                    s.close()  # a peer that will not finish TLS: cut it
