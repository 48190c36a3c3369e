"""smtpd's connections to the lookup service: many questions per connection.

The service (lspawn/lookup.py) runs in the test's own event loop on a real
Unix socket, or as its own process where a test kills it; smtpd's side is
the real pool (ipc/lookup.py) and, for whole sessions, the real smtpd
session loop behind a TCP listener that smtplib talks to.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from pyqmail.config import Home, SmtpdConfig
from pyqmail.ipc import lookup as proto
from pyqmail.ipc.frames import pack
from pyqmail.ipc.listen import unix_listener
from pyqmail.lspawn.lookup import Lookup, LookupConnection
from pyqmail.net.peer import client_for
from pyqmail.smtpd.policy import Service, SmtpPolicy, Submission
from pyqmail.smtpd.session import serve_smtp
from tests.harness import BIN, environ_with_home, wait_until

GOOD = b"postmaster@localhost"
BAD = b"nobody-here@localhost"


class CountingService:
    """The real lookup service, counting the connections it accepts."""

    def __init__(self, home: Path) -> None:
        self.lookup = Lookup(Home(str(home)))
        self.path = str(home / "queue" / "lock" / "lookup.sock")
        self.accepted = 0
        self.server: asyncio.AbstractServer | None = None

    def _factory(self) -> LookupConnection:
        self.accepted += 1
        return LookupConnection(self.lookup)

    async def start(self) -> None:
        sock = unix_listener(self.path, mode=0o666)
        self.server = await asyncio.get_running_loop().create_unix_server(self._factory, sock=sock)

    def stop(self) -> None:
        """What the service does on SIGTERM: stop listening, hang up on everyone."""
        assert self.server is not None
        self.server.close()
        for conn in list(self.lookup.connections):
            conn.close()


@asynccontextmanager
async def service(home: Path) -> AsyncIterator[CountingService]:
    svc = CountingService(home)
    await svc.start()
    try:
        yield svc
    finally:
        proto.client(svc.path).close()
        svc.stop()
        await asyncio.sleep(0)  # let the transports finish closing in this loop


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


def test_questions_share_one_connection(home: Path) -> None:
    async def main() -> None:
        async with service(home) as svc:
            answers = [await proto.ask_rcpt(svc.path, a) for a in (GOOD, BAD, GOOD, BAD)]
            assert [a[:1] for a in answers] == [b"K", b"D", b"K", b"D"]
            assert answers[1] == b"Dsorry, no mailbox here by that name (#5.1.1)"
            assert svc.accepted == 1
            assert len(svc.lookup.connections) == 1

    run(main)


def test_concurrent_questions_get_their_own_connections_then_reuse_them(home: Path) -> None:
    async def main() -> None:
        async with service(home) as svc:
            first = await asyncio.gather(*(proto.ask_rcpt(svc.path, GOOD) for _ in range(3)))
            assert first == [b"K"] * 3
            opened = svc.accepted
            assert 1 <= opened <= 3
            again = await asyncio.gather(
                *(proto.ask_rcpt(svc.path, a) for a in (BAD, GOOD, BAD)),
            )
            assert [a[:1] for a in again] == [b"D", b"K", b"D"]
            assert svc.accepted == opened  # all three answered on the pool's connections

    run(main)


class NoQueue:
    async def open(self) -> Submission:
        raise OSError("no queue in this test")


@asynccontextmanager
async def smtpd(home: Path, lookup_path: str) -> AsyncIterator[int]:
    """smtpd's session loop on a loopback port, checking RCPTs through lookup_path."""
    cfg = SmtpdConfig.load(Home(str(home)))
    service_ = Service(lookup_socket=lookup_path)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = client_for("127.0.0.1", "127.0.0.1", {})
        assert client is not None
        await serve_smtp(reader, writer, SmtpPolicy(cfg, client, NoQueue(), service_))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def smtp_rcpts(port: int, rcpts: list[bytes]) -> list[int]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.example")
        s.mail("a@example.org")
        codes = [s.rcpt(r.decode())[0] for r in rcpts]
        s.rset()
        return codes


def test_smtp_sessions_ask_over_one_lookup_connection(home: Path) -> None:
    async def main() -> None:
        async with service(home) as svc, smtpd(home, svc.path) as port:
            codes = await asyncio.to_thread(smtp_rcpts, port, [GOOD, BAD, GOOD, b"x@example.net"])
            # x@example.net is not in rcpthosts: refused before any question
            assert codes == [250, 550, 250, 553]
            assert svc.accepted == 1
            codes = await asyncio.to_thread(smtp_rcpts, port, [BAD, GOOD])
            assert codes == [550, 250]
            assert svc.accepted == 1  # the next session asked on the same connection

    run(main)


def test_qmail_smtpd_under_tcpserver_asks_over_one_connection_and_closes_it(home: Path) -> None:
    dialog = (
        b"HELO client.example\r\nMAIL FROM:<a@example.org>\r\n"
        + b"".join(b"RCPT TO:<%s>\r\n" % r for r in (GOOD, BAD, GOOD))
        + b"QUIT\r\n"
    )
    env = environ_with_home(home)
    env.update(TCPREMOTEIP="127.0.0.1", TCPLOCALIP="127.0.0.1", PYTHONDEVMODE="1")

    async def main() -> None:
        async with service(home) as svc:
            proc = await asyncio.create_subprocess_exec(
                str(BIN / "qmail-smtpd"),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )
            out, err = await proc.communicate(dialog)
            codes = [line[:3] for line in out.split(b"\r\n") if line]
            assert codes == [b"220", b"250", b"250", b"250", b"550", b"250", b"221"], out
            assert proc.returncode == 0
            assert svc.accepted == 1
            assert b"unclosed" not in err, err  # dev mode names a socket left open
            for _ in range(200):
                if not svc.lookup.connections:
                    break
                await asyncio.sleep(0.05)
            assert not svc.lookup.connections  # smtpd's exit hung up

    run(main)


def test_service_restarted_between_questions_is_reconnected(home: Path) -> None:
    async def main() -> None:
        async with service(home) as svc:
            assert await proto.ask_rcpt(svc.path, BAD) == (
                b"Dsorry, no mailbox here by that name (#5.1.1)"
            )
            svc.stop()  # smtpd's idle connection is hung up on
            assert await proto.ask_rcpt(svc.path, GOOD) == proto.UNREACHABLE
            await svc.start()
            assert await proto.ask_rcpt(svc.path, BAD) == (
                b"Dsorry, no mailbox here by that name (#5.1.1)"
            )
            assert svc.accepted == 2

    run(main)


def test_service_quiet_too_long_hangs_up_and_smtpd_reconnects(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(proto, "IDLE_TIMEOUT_S", 0.2)

    async def main() -> None:
        async with service(home) as svc:
            assert await proto.ask_rcpt(svc.path, GOOD) == b"K"
            for _ in range(600):  # the service's idle timer, re-armed after each question
                if not svc.lookup.connections:
                    break
                await asyncio.sleep(0.05)
            assert not svc.lookup.connections
            assert await proto.ask_rcpt(svc.path, BAD) == (
                b"Dsorry, no mailbox here by that name (#5.1.1)"
            )
            assert svc.accepted == 2

    run(main)


@contextmanager
def lookup_process(home: Path) -> Iterator[subprocess.Popen[bytes]]:
    sock = home / "queue" / "lock" / "lookup.sock"
    if sock.exists():
        sock.unlink()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pyqmail.lspawn.lookup", "--home", str(home)],
        env=environ_with_home(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"lookup exited {proc.returncode}")
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(sock))
            except OSError:
                return False
        return True

    try:
        wait_until(listening, 30, "the lookup service to listen")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_service_killed_between_questions_answers_after_restart(home: Path) -> None:
    path = str(home / "queue" / "lock" / "lookup.sock")

    async def ask(address: bytes) -> bytes:
        return await proto.ask_rcpt(path, address)

    async def main() -> None:
        with lookup_process(home) as first:
            assert await ask(GOOD) == b"K"
            pool = proto.client(path)
            assert pool.idle_connections == 1  # kept for the next question
            first.send_signal(signal.SIGKILL)
            first.wait()
        with lookup_process(home):
            # the pooled connection is dead; the question goes over a new one
            answer = await ask(BAD)
            assert answer == b"Dsorry, no mailbox here by that name (#5.1.1)"
        proto.client(path).close()
        await asyncio.sleep(0)

    run(main)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def fake_service(handler: Handler) -> AsyncIterator[str]:
    """A stand-in lookup service on a fresh socket; yields its path, closes all after."""
    tmp = tempfile.mkdtemp(prefix="pyqlookup-")
    path = os.path.join(tmp, "lookup.sock")
    server = await asyncio.start_unix_server(handler, path)
    try:
        yield path
    finally:
        proto.client(path).close()
        server.close()
        await asyncio.sleep(0)
        shutil.rmtree(tmp)


def test_unanswered_question_is_dropped_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proto, "RCPT_TIMEOUT_S", 0.3)
    seen: list[bytes] = []

    async def main() -> None:
        async def silent_then_answering(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            seen.append(await reader.readexactly(len(pack(proto.RCPT, GOOD))))
            if len(seen) > 1:
                writer.write(b"1:K,")  # the second connection answers
            await reader.read()  # the first never does: it waits for smtpd to give up
            writer.close()

        async with fake_service(silent_then_answering) as path:
            assert await proto.ask_rcpt(path, GOOD) == proto.UNREACHABLE
            assert await proto.ask_rcpt(path, GOOD) == b"K"
            assert len(seen) == 2  # a late answer on the first could never be read as this one

    run(main)


def test_short_question_after_a_long_one_keeps_its_own_time_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(proto, "RCPT_TIMEOUT_S", 0.3)  # AUTH keeps its 40 s

    async def main() -> None:
        async def answers_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(len(pack(proto.AUTH, b"u", b"p", b"<t>")))
            writer.write(b"1:K,")
            await reader.read()  # the RCPT after it is never answered
            writer.close()

        async with fake_service(answers_once) as path:
            assert await proto.ask_auth(path, b"u", b"p", b"<t>") == b"K"
            async with asyncio.timeout(10):  # not the AUTH's 40 s
                assert await proto.ask_rcpt(path, GOOD) == proto.UNREACHABLE

    run(main)


def test_garbled_answer_is_unreachable_and_the_connection_dropped() -> None:
    connections = 0

    async def main() -> None:
        async def garbling(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            while await reader.read(4096):
                writer.write(b"3:Xno," if connections == 1 else b"1:K,")
            writer.close()

        async with fake_service(garbling) as path:
            assert await proto.ask_rcpt(path, GOOD) == proto.UNREACHABLE
            assert await proto.ask_rcpt(path, GOOD) == b"K"
            assert connections == 2

    run(main)


WRONG_UID_PROBE = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(20)
s.connect(sys.argv[1])
try:
    s.sendall(b"26:RCPT1\\0postmaster@localhost,")
    print(repr(s.recv(200)))
except (ConnectionResetError, BrokenPipeError):
    print("reset")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="running as another uid needs root (CI has it)")
def test_peer_with_another_uid_is_refused_and_allowed_one_still_served(home: Path) -> None:
    top = tempfile.mkdtemp(prefix="pyqlookup-")
    os.chmod(top, 0o755)  # nobody must reach the socket to be refused by its uid
    path = os.path.join(top, "lookup.sock")

    async def main() -> None:
        svc = CountingService(home)
        svc.path = path
        await svc.start()
        try:
            res = await asyncio.to_thread(
                subprocess.run,
                ["/usr/bin/python3", "-I", "-c", WRONG_UID_PROBE, path],
                user=65534,
                group=65534,
                extra_groups=[],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
                cwd="/",
            )
            assert res.returncode == 0, res.stderr
            assert res.stdout.strip() in ("b''", "reset")  # hung up on, no answer
            assert svc.accepted == 1
            assert await proto.ask_rcpt(path, GOOD) == b"K"  # root is smtpd's peer here
            assert await proto.ask_rcpt(path, BAD) != proto.UNREACHABLE
            assert svc.accepted == 2
        finally:
            proto.client(path).close()
            svc.stop()
            await asyncio.sleep(0)

    try:
        run(main)
    finally:
        shutil.rmtree(top)
