"""send's operator channel: hold, release, delete and retry queued messages.

Runs inside send (qmails), so every change to the queue is made by the one
program that owns the schedule; ``pyqmail queue`` never edits queue files.
Reads:   requests on queue/lock/send.sock (ipc/control_proto.py).
Trusts:  only peers with send's own uid or root (SO_PEERCRED; the socket is
         0600 too). Requests are one bounded frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from pyqmail.formats import netstring
from pyqmail.formats.dates import qread_date
from pyqmail.ipc.control_proto import REQUEST_LIMIT, parse_request
from pyqmail.ipc.frames import pack, peer_uid_pid, read_frame
from pyqmail.ipc.listen import unix_listener
from pyqmail.send.scheduler import CHANNELS, Sender
from pyqmail.unix.logfmt import log

CLIENT_TIMEOUT_S = 30.0


class ControlServer:
    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.server: asyncio.Server | None = None
        self.my_uid = os.geteuid()

    async def start(self) -> None:
        sock = unix_listener(self.sender.home.socket("send"), mode=0o600)
        self.server = await asyncio.start_unix_server(self.client, sock=sock)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            uid = peer_uid_pid(sock)[0] if sock is not None else -1
            if uid not in (self.my_uid, 0):
                writer.write(pack(b"Dpermission denied"))
                return
            async with asyncio.timeout(CLIENT_TIMEOUT_S):
                payload = await read_frame(reader, REQUEST_LIMIT)
            if payload is None:
                return
            parsed = parse_request(payload)
            if isinstance(parsed, str):
                writer.write(pack(b"D" + parsed.encode()))
                return
            try:
                output, status, text = self.perform(*parsed)
            except OSError as exc:  # e.g. hold/ unwritable: say so, keep serving
                log(f"warning: operator request failed: {exc}")
                output, status, text = [], b"Z", f"send could not do it: {exc}"
            for line in output:
                writer.write(pack(b"O" + line.encode()))
            writer.write(pack(status + text.encode()))
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, netstring.NetstringError):
            return
        except asyncio.CancelledError:
            return  # shutting down
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    def perform(self, command: bytes, msg_id: int | None) -> tuple[list[str], bytes, str]:
        s = self.sender
        if command == b"retry" and msg_id is None:
            s.retry(None)
            log("status: retrying every message for the operator")
            return [], b"K", "retrying every queued message now"
        if msg_id is None:
            return [], b"D", f"{command.decode()} needs a message id"
        msg = s.find(msg_id)
        if msg is None:
            if msg_id in s.preprocessing or msg_id in s.todo_known:
                return [], b"Z", f"message {msg_id} is not preprocessed yet; try again"
            return [], b"D", f"no message {msg_id} in the queue"
        if command == b"when":
            lines = []
            for kind in CHANNELS:
                chan = msg.chan(kind)
                if chan is None:
                    continue
                if chan.outstanding:
                    lines.append(f"{kind}: delivery in progress")
                elif msg.held:
                    lines.append(f"{kind}: held")
                else:
                    lines.append(f"{kind}: next attempt {qread_date(chan.next_time)}")
            if msg.finishing:
                lines.append("finished: bounce being queued")
            return lines, b"K", ""
        if msg.finishing:
            return [], b"D", f"message {msg_id} is finished and being removed"
        if command == b"hold":
            s.hold(msg)
            return [], b"K", f"message {msg_id} held"
        if command == b"release":
            s.release(msg)
            return [], b"K", f"message {msg_id} released"
        if command == b"retry":
            if msg.held:
                return [], b"D", f"message {msg_id} is held; release it first"
            s.retry(msg)
            log(f"status: retrying msg {msg_id} for the operator")
            return [], b"K", f"retrying message {msg_id} now"
        # delete
        s.delete(msg)
        if s.msgs.get(msg_id) is msg:
            # a delivery is running: the message goes when it reports (a crash
            # before then leaves it queued)
            return [], b"K", f"message {msg_id} will be deleted when its running delivery ends"
        return [], b"K", f"message {msg_id} deleted"
