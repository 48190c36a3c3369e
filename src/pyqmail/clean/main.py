"""qmail-clean: remove queue files on send's behalf.

Runs as: qmailq (the invoking user in embedded mode).
Reads:   commands ``todo/N`` and ``foop/N`` on its Unix socket.
Writes:  unlinks queue/intd/N, queue/todo/N, queue/mess/S/N; nothing else.
Trusts:  nothing: a command must be ``todo/`` or ``foop/`` + digits, 7..100
         bytes, or it is answered ``x``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from pyqmail.config import Home
from pyqmail.formats import netstring
from pyqmail.ipc.frames import pack, read_frame
from pyqmail.ipc.listen import serve_unix_until_stopped
from pyqmail.unix import durable
from pyqmail.unix.logfmt import log

PID_MAX_AGE_S = 36 * 3600
SWEEP_EVERY = 30


class Cleaner:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.count = 0

    def handle(self, cmd: bytes) -> bytes:
        if not 7 <= len(cmd) <= 100:
            return b"x"
        kind, _, digits = cmd.partition(b"/")
        if kind not in (b"todo", b"foop") or not digits.isdigit():
            return b"x"
        if self.count % SWEEP_EVERY == 0:
            self.sweep_pid()
        self.count += 1
        msg_id = int(digits)
        try:
            durable.unlink_quiet(self.home.q("intd", str(msg_id)))
            if kind == b"todo":
                durable.unlink_quiet(self.home.q("todo", str(msg_id)))
                durable.fsync_dir(self.home.q("todo"))
            else:
                durable.unlink_quiet(self.home.split_path("mess", msg_id))
        except OSError as exc:
            log(f"warning: unable to clean {cmd.decode(errors='replace')}: {exc}")
            return b"!"
        return b"+"

    def sweep_pid(self) -> None:
        cutoff = time.time() - PID_MAX_AGE_S
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.home.q("pid")):
                with contextlib.suppress(OSError):
                    if entry.stat().st_atime < cutoff:
                        os.unlink(entry.path)

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                cmd = await read_frame(reader, 200)
                if cmd is None:
                    break
                writer.write(pack(cmd, self.handle(cmd)))
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, netstring.NetstringError) as exc:
            log(f"warning: dropped a client: {exc}")
        except asyncio.CancelledError:
            return  # shutting down (3.11 streams log a cancelled handler otherwise)
        finally:
            writer.close()


async def serve(home: Home) -> None:
    await serve_unix_until_stopped(home.socket("clean"), Cleaner(home).client)
