"""Test harness: a whole pyqmail on a temporary home, and a loopback SMTP sink."""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def pyqmail(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "pyqmail"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class RunningMta:
    home: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    smtp_port: int = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def component_pid(self, name: str) -> int:
        pids = re.findall(rf"status: started {name} pid (\d+)", self.log())
        assert pids, f"{name} never started"
        return int(pids[-1])

    def maildir(self, user: str) -> Path:
        return self.home / "mailboxes" / user / "Maildir"

    def maildir_files(self, user: str) -> list[Path]:
        md = self.maildir(user)
        return sorted([*(md / "new").iterdir(), *(md / "cur").iterdir()])

    def wait_for_maildir(self, user: str, count: int = 1, timeout: float = 20) -> list[Path]:
        wait_until(
            lambda: len(self.maildir_files(user)) >= count,
            timeout,
            f"{count} message(s) in {user}'s Maildir",
        )
        return self.maildir_files(user)

    def queue_empty(self) -> bool:
        q = self.home / "queue"
        mess_empty = all(not any((q / "mess" / str(n)).iterdir()) for n in range(23))
        return mess_empty and not any((q / "todo").iterdir())

    def port(self, listener: str) -> int:
        """The port a listener got (``--qmtp 127.0.0.1:0`` and the like)."""
        ports = re.findall(rf"{listener} listening on 127\.0\.0\.1:(\d+)", self.log())
        assert ports, f"no {listener} listener in the log"
        return int(ports[-1])  # the latest start: a restarted MTA appends to its log

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def init_home(home: Path, *extra: str) -> None:
    res = pyqmail("init", "--home", str(home), *extra)
    assert res.returncode == 0, res.stderr
    # DNS only ever goes to a loopback server a test starts; by default to a
    # closed port, so nothing reaches this machine's own resolver
    write_control(home, "resolvers", "127.0.0.1:9\n")


def start_mta(home: Path, *extra: str) -> RunningMta:
    log_path = home / "log" / "pyqmail.log"
    # a restarted MTA appends to the same log: readiness is judged on the new part
    offset = log_path.stat().st_size if log_path.exists() else 0
    log_fh = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [
            str(BIN / "pyqmail"),
            "start",
            "--home",
            str(home),
            "--smtp",
            "127.0.0.1:0",
            *("--qmtp", "off", "--qmqp", "off"),  # fixed default ports: opt in per test
            *extra,
        ],
        stdout=log_fh,
        stderr=log_fh,
        stdin=subprocess.DEVNULL,
    )
    log_fh.close()
    mta = RunningMta(home, proc, log_path)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"pyqmail start exited {proc.returncode}:\n{mta.log()}")
        text = log_path.read_bytes()[offset:].decode(errors="replace")
        m = re.search(r"smtp listening on 127\.0\.0\.1:(\d+)", text)
        if m:
            mta.smtp_port = int(m.group(1))
        listeners = [p for p in ("qmtp", "qmqp") if f"{p} listening on" in text]
        return (
            bool(m)
            and "smtpd ready" in text
            and "queue writer ready" in text
            and all(f"{p}d ready" in text for p in listeners)
        )

    wait_until(ready, 20, "pyqmail to start")
    return mta


@contextlib.contextmanager
def running_mta(home: Path, *extra: str) -> Iterator[RunningMta]:
    mta = start_mta(home, *extra)
    try:
        yield mta
    finally:
        try:
            mta.stop()
        except subprocess.TimeoutExpired:
            mta.proc.kill()
            mta.proc.wait()


# -- a loopback SMTP sink --------------------------------------------------------


@dataclass
class Received:
    mail_from: bytes
    rcpts: list[bytes]
    data: bytes


@dataclass
class Sink:
    """Accepts, defers or rejects per recipient: a local part starting with
    'defer' gets 451, 'reject' gets 550; everything else is accepted."""

    port: int = 0
    messages: list[Received] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    accept_everything: bool = False  # set to stop deferring and rejecting

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self.lock:
            self.connections += 1
        writer.write(b"220 sink ESMTP\r\n")
        mail_from, rcpts = b"", list[bytes]()
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                cmd = line.rstrip(b"\r\n")
                verb = cmd[:4].upper()
                if verb == b"EHLO":
                    writer.write(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE\r\n")
                elif verb == b"HELO":
                    writer.write(b"250 sink\r\n")
                elif verb == b"MAIL":
                    mail_from, rcpts = cmd[10:].split(b">")[0].lstrip(b"<"), []
                    writer.write(b"250 ok\r\n")
                elif verb == b"RCPT":
                    addr = cmd[8:].split(b">")[0].lstrip(b"<")
                    if addr.startswith(b"defer") and not self.accept_everything:
                        writer.write(b"451 try later\r\n")
                    elif addr.startswith(b"reject") and not self.accept_everything:
                        writer.write(b"550 no such user\r\n")
                    else:
                        rcpts.append(addr)
                        writer.write(b"250 ok\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go\r\n")
                    await writer.drain()
                    lines = []
                    while True:
                        ln = await reader.readline()
                        if ln in (b".\r\n", b""):
                            break
                        lines.append(ln[1:] if ln.startswith(b".") else ln)
                    with self.lock:
                        self.messages.append(Received(mail_from, rcpts, b"".join(lines)))
                    writer.write(b"250 accepted\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()


@contextlib.contextmanager
def running_sink() -> Iterator[Sink]:
    sink = Sink()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    server_box: list[asyncio.base_events.Server] = []

    async def main() -> None:
        server = await asyncio.start_server(sink.handle, "127.0.0.1", 0)
        sink.port = server.sockets[0].getsockname()[1]
        server_box.append(server)
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(main(), loop).result(10)
    started.wait(10)
    try:
        yield sink
    finally:

        async def shutdown() -> None:
            server_box[0].close()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def write_control(home: Path, name: str, text: str) -> None:
    (home / "control" / name).write_text(text)


def environ_with_home(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["QMAILHOME"] = str(home)
    return env


@contextlib.contextmanager
def mta_with_sink(home: Path, domain: str = "example.net") -> Iterator[tuple[RunningMta, Sink]]:
    """An MTA whose mail for domain is routed (control/smtproutes) to a loopback sink."""
    with running_sink() as sink:
        write_control(home, "smtproutes", f"{domain}:127.0.0.1:{sink.port}\n")
        with running_mta(home) as mta:
            yield mta, sink


def mime_parts(msg: email.message.Message) -> list[email.message.Message]:
    """The sub-parts of a multipart or message/* part, typed for mypy."""
    payload = msg.get_payload()
    assert isinstance(payload, list), f"{msg.get_content_type()} has no sub-parts"
    parts = [p for p in payload if isinstance(p, email.message.Message)]
    assert len(parts) == len(payload)
    return parts
