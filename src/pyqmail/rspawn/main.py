"""qmail-rspawn: run remote deliveries for send, many at once.

Runs as: qmailr (the invoking user in embedded mode).
Reads:   requests from send on its Unix socket; control files via remote/.
Writes:  replies to send; queue/lock/tcpto (zeroed at start, as qmail-rspawn).
Trusts:  send's requests are parsed strictly: message path shape, address
         sizes and recipient counts are bounded.
"""

from __future__ import annotations

import asyncio
import re

from pyqmail.config import Home, QmtpConfig, RemoteConfig
from pyqmail.formats import netstring
from pyqmail.formats.address import domain_of
from pyqmail.ipc.frames import pack, read_frame
from pyqmail.ipc.listen import serve_unix_until_stopped
from pyqmail.remote import qmtp
from pyqmail.remote.deliver import Remote, RemoteJob
from pyqmail.remote.tcpto import TcpTo
from pyqmail.unix.logfmt import log

MESSPATH_RE = re.compile(rb"\A[0-9]{1,3}/[0-9]{1,20}\Z")
MAX_RCPTS = 1000
MAX_ADDRESS = 1000


class RSpawner:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.cfg = RemoteConfig.load(home)
        tcpto = home.q("lock", "tcpto")
        try:
            TcpTo(tcpto).clear()  # as qmail-rspawn: a restart forgives every host
        except OSError as exc:
            log(f"warning: unable to clear {tcpto}: {exc}")
        self.remote = Remote(self.cfg, tcpto)
        self.qmtp_cfg = QmtpConfig.load(home)
        self.tasks: set[asyncio.Task[None]] = set()

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                frame = await read_frame(reader)
                if frame is None:
                    break
                task = asyncio.get_running_loop().create_task(self.job(frame, writer))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        except (OSError, asyncio.IncompleteReadError, netstring.NetstringError) as exc:
            log(f"warning: dropped send: {exc}")
        except asyncio.CancelledError:
            return  # shutting down (3.11 streams log a cancelled handler otherwise)
        finally:
            writer.close()

    async def job(self, frame: bytes, writer: asyncio.StreamWriter) -> None:
        fields = frame.split(b"\0")
        job_id = fields[0]
        if len(fields) < 4 or len(fields) - 3 > MAX_RCPTS or not MESSPATH_RE.match(fields[1]):
            reports = [b"Zqmail-spawn unable to understand request. (#4.3.0)"] * max(
                1, len(fields) - 3
            )
        elif any(len(a) > MAX_ADDRESS for a in fields[2:]):
            reports = [b"DSorry, address too long. (#5.1.3)"] * (len(fields) - 3)
        else:
            rcpts = tuple(fields[3:])
            job = RemoteJob(
                self.home.q("mess", fields[1].decode()), fields[2], rcpts, domain_of(rcpts[0])
            )
            try:
                # QMTP where qmtproutes or MXPS say so, falling back to SMTP
                reports = await qmtp.deliver(job, self.remote, self.qmtp_cfg)
            except Exception as exc:  # a bug here must defer, not lose, the mail
                log(f"warning: remote delivery crashed: {exc!r}")
                reports = [b"ZUnable to run qmail-remote. (#4.3.0)"] * len(rcpts)
        if writer.is_closing():
            return
        writer.write(pack(job_id, *[r.replace(b"\0", b"?") for r in reports]))


async def serve(home: Home) -> None:
    spawner = RSpawner(home)
    try:
        await serve_unix_until_stopped(home.socket("rspawn"), spawner.client)
    finally:
        pool = spawner.remote.pool
        log(f"status: {pool.opened} remote connection(s) opened, {pool.reused} reuse(s)")
        await pool.close_all()
