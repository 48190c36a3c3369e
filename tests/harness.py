"""Test harness: a whole pyqmail on a temporary home, and a loopback SMTP sink."""

from __future__ import annotations

import asyncio
import contextlib
import email.message
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

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
    submission_port: int = 0

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
            *("--qmtp", "off", "--qmqp", "off", "--pop3", "off"),  # fixed ports: opt in per test
            *("--submission", "127.0.0.1:0"),
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
        sub = re.search(r"submission listening on 127\.0\.0\.1:(\d+)", text)
        if sub:
            mta.submission_port = int(sub.group(1))
        listeners = [p for p in ("qmtp", "qmqp") if f"{p} listening on" in text]
        return (
            bool(m and sub)
            and "smtpd ready" in text
            and "queue writer ready" in text
            and "lookup ready" in text
            and all(f"{p}d ready" in text for p in listeners)
        )

    try:
        wait_until(ready, 20, "pyqmail to start")
    except BaseException:
        # never leave a half-started MTA running behind a failed test
        with contextlib.suppress(subprocess.TimeoutExpired):
            mta.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise
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
    tls: bool = False  # the transaction ran under STARTTLS
    peer: str = ""  # the client's address
    params: bytes = b""  # MAIL FROM parameters (SIZE=, BODY=, SMTPUTF8)
    connection: int = 0  # which connection (1, 2, ...) carried it


@dataclass
class Sink:
    """Accepts, defers or rejects per recipient: a local part starting with
    'defer' gets 451, 'reject' gets 550; everything else is accepted.

    Options for remote-delivery tests: greet with another name, offer
    STARTTLS with tls_context, answer EHLO with 500 (HELO only), advertise a
    SIZE limit or SMTPUTF8, accept at most max_rcpts per transaction (then
    452, RFC 5321 §4.5.3.1.10). DATA without an accepted recipient gets 554
    (RFC 2920 §3.1), as real servers answer a pipelined DATA.
    """

    port: int = 0
    messages: list[Received] = field(default_factory=list)
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    accept_everything: bool = False  # set to stop deferring and rejecting
    name: str = "sink"
    tls_context: ssl.SSLContext | None = None
    ehlo: bool = True
    size_limit: int = 0
    smtputf8: bool = False
    max_rcpts: int = 0
    peers: list[str] = field(default_factory=list)
    helos: list[bytes] = field(default_factory=list)
    drop_after: int = 0  # close each connection after this many messages, unasked
    die_after_dot: bool = False  # take the whole message, then hang up without a reply
    stall_at_dot: int = 0  # never answer the final dot of this connection's Nth message
    reply_delay: float = 0.0  # wait this long before acting on each command line
    greeting: bytes = b""  # a whole greeting line instead of "220 NAME ESMTP"

    def _ehlo_reply(self, tls: bool) -> bytes:
        words = [self.name.encode(), b"PIPELINING", b"8BITMIME"]
        words.append(b"SIZE %d" % self.size_limit if self.size_limit else b"SIZE")
        if self.smtputf8:
            words.append(b"SMTPUTF8")
        if self.tls_context is not None and not tls:
            words.append(b"STARTTLS")
        return b"".join(b"250-" + w + b"\r\n" for w in words[:-1]) + b"250 " + words[-1] + b"\r\n"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[0]
        with self.lock:
            self.connections += 1
            conn_no = self.connections
            self.peers.append(peer)
        writer.write(self.greeting or b"220 " + self.name.encode() + b" ESMTP\r\n")
        if self.greeting[:1] in (b"4", b"5"):
            await writer.drain()
            writer.close()
            return
        mail_from, params, rcpts = b"", b"", list[bytes]()
        tls = False
        taken = 0
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                cmd = line.rstrip(b"\r\n")
                verb = cmd[:4].upper()
                if self.reply_delay and verb != b"QUIT":
                    await asyncio.sleep(self.reply_delay)
                if verb == b"EHLO":
                    with self.lock:
                        self.helos.append(cmd)
                    writer.write(self._ehlo_reply(tls) if self.ehlo else b"500 say HELO\r\n")
                elif verb == b"HELO":
                    with self.lock:
                        self.helos.append(cmd)
                    writer.write(b"250 " + self.name.encode() + b"\r\n")
                elif cmd.upper() == b"STARTTLS" and self.tls_context is not None and not tls:
                    writer.write(b"220 go ahead\r\n")
                    await writer.drain()
                    await writer.start_tls(self.tls_context)
                    tls = True
                    mail_from, rcpts = b"", []
                    continue
                elif verb == b"MAIL":
                    path, _, params = cmd[10:].partition(b">")
                    mail_from, params, rcpts = path.lstrip(b"<"), params.strip(), []
                    writer.write(b"250 ok\r\n")
                elif verb == b"RCPT":
                    addr = cmd[8:].split(b">")[0].lstrip(b"<")
                    if self.max_rcpts and len(rcpts) >= self.max_rcpts:
                        writer.write(b"452 4.5.3 too many recipients\r\n")
                    elif addr.startswith(b"defer") and not self.accept_everything:
                        writer.write(b"451 try later\r\n")
                    elif addr.startswith(b"reject") and not self.accept_everything:
                        writer.write(b"550 no such user\r\n")
                    else:
                        rcpts.append(addr)
                        writer.write(b"250 ok\r\n")
                elif verb == b"DATA" and not rcpts:
                    writer.write(b"554 no valid recipients\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go\r\n")
                    await writer.drain()
                    lines = []
                    while True:
                        ln = await reader.readline()
                        if not ln:
                            return  # no final dot: not a message
                        if ln == b".\r\n":
                            break
                        lines.append(ln[1:] if ln.startswith(b".") else ln)
                    if self.die_after_dot:
                        return
                    if self.stall_at_dot == taken + 1:
                        await reader.read()  # until the client gives up and hangs up
                        return
                    got = Received(mail_from, rcpts, b"".join(lines), tls, peer, params, conn_no)
                    with self.lock:
                        self.messages.append(got)
                    mail_from, rcpts = b"", []
                    writer.write(b"250 accepted\r\n")
                    taken += 1
                    if self.drop_after and taken >= self.drop_after:
                        await writer.drain()
                        return
                elif verb == b"RSET":
                    mail_from, rcpts = b"", []
                    writer.write(b"250 ok\r\n")
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
def running_sink(host: str = "127.0.0.1", port: int = 0, **options: Any) -> Iterator[Sink]:
    sink = Sink(**options)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    server_box: list[asyncio.base_events.Server] = []

    async def main() -> None:
        server = await asyncio.start_server(sink.handle, host, port)
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


def swaks(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    """swaks against 127.0.0.1:port; skips the test where swaks is not installed."""
    if shutil.which("swaks") is None:
        pytest.skip("swaks not installed (make test installs it when root)")
    return subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(port), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def run_tool(home: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """One of the installed programs (argv[0], from BIN) run on home, output captured."""
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        env=environ_with_home(home),
        timeout=30,
        check=False,
    )


needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")


def strace_python(code: str, *args: str, trace: str) -> subprocess.CompletedProcess[str]:
    """``python -c code args`` under ``strace -f -qq -e trace=...``: strace's
    lines are in the result's stderr, with whatever the program wrote there."""
    return subprocess.run(
        [*("strace", "-f", "-qq", "-e", f"trace={trace}"), sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def call_names(lines: Iterable[str]) -> list[str]:
    """The system calls strace's lines show, in order; a call strace split
    in two (unfinished, then resumed) counts once."""
    return [
        line.split("(")[0].split()[-1] for line in lines if "(" in line and "resumed" not in line
    ]
