"""The two servers of the queue writer's socket speak one protocol.

The queue writer and a mini node's QMQP forwarder both read their clients
with ipc/queue_proto's server half. Here both run in-process on real Unix
sockets over a real home; the same byte streams, good and bad, go to each.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from pyqmail.config import Home
from pyqmail.formats import netstring
from pyqmail.ipc.frames import read_frame
from pyqmail.ipc.queue_proto import MAGIC, SubmissionServer
from pyqmail.qmqpc.forwarder import Forwarder
from pyqmail.queue.writer import QueueWriter
from tests.harness import init_home, write_control

GOOD_ENV = b"Fa@example.org\0Tb@example.net\0\0"
HEADER = netstring.encode(MAGIC + b"\0local")
BODY = netstring.encode(b"Subject: hi\n\nhello\n") + b"0:,"

# stream -> the reply both servers must give
BAD_STREAMS = {
    "bad magic": (netstring.encode(b"QMQ9\0local"), b"Zqq internal bug (#4.3.0)"),
    "unknown origin": (netstring.encode(MAGIC + b"\0mars"), b"Zqq internal bug (#4.3.0)"),
    "eof in body": (HEADER + netstring.encode(b"half"), b"Zqq read error (#4.3.0)"),
    "no envelope": (HEADER + BODY, b"Zqq read error (#4.3.0)"),
    "envelope not F": (
        HEADER + BODY + netstring.encode(b"Xa\0\0"),
        b"Zqq internal bug (#4.3.0)",
    ),
    "envelope truncated": (
        HEADER + BODY + netstring.encode(b"Fa\0Tb\0"),
        b"Zqq read error (#4.3.0)",
    ),
    "address too long": (
        HEADER + BODY + netstring.encode(b"F" + b"x" * 1000 + b"\0Tb\0\0"),
        b"Denvelope address too long for qq (#5.1.3)",
    ),
    "bad netstring": (HEADER + b"01:x,", b"Zqq read error (#4.3.0)"),
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Home:
    root = tmp_path_factory.mktemp("qsock") / "qmail"
    init_home(root)
    return Home(str(root))


def queue_files(home: Home) -> list[str]:
    found = []
    for kind in ("mess", "intd", "todo"):
        for dirpath, _dirs, files in os.walk(home.q(kind)):
            found += [os.path.join(dirpath, f) for f in files]
    return found


@asynccontextmanager
async def unix_server(factory: SubmissionServer, path: str) -> AsyncIterator[None]:
    server = await asyncio.get_running_loop().create_unix_server(factory, path)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


async def exchange(path: str, stream: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(stream)
    await writer.drain()
    writer.write_eof()
    reply = await asyncio.wait_for(read_frame(reader), 30)
    writer.close()
    assert reply is not None
    return reply


@pytest.mark.parametrize("case", sorted(BAD_STREAMS))
def test_writer_and_forwarder_refuse_bad_streams_alike(
    home: Home, tmp_path: Path, case: str
) -> None:
    stream, expected = BAD_STREAMS[case]
    write_control(Path(home.root), "qmqpservers", "127.0.0.1:9\n")

    async def run() -> tuple[bytes, bytes]:
        qw = QueueWriter(home)
        qw.recover()
        fwd = Forwarder(home)
        wpath, fpath = str(tmp_path / "w.sock"), str(tmp_path / "f.sock")
        async with unix_server(qw.server, wpath), unix_server(fwd.server, fpath):
            return await exchange(wpath, stream), await exchange(fpath, stream)

    before = queue_files(home)
    by_writer, by_forwarder = asyncio.run(run())
    assert by_writer == expected
    assert by_forwarder == expected
    assert queue_files(home) == before, "a refused message left files in the queue"


def test_writer_says_k_only_once_the_message_is_in_todo(home: Home, tmp_path: Path) -> None:
    async def run() -> bytes:
        qw = QueueWriter(home)
        qw.recover()
        path = str(tmp_path / "w.sock")
        async with unix_server(qw.server, path):
            return await exchange(path, HEADER + BODY + netstring.encode(GOOD_ENV))

    reply = asyncio.run(run())
    assert reply.startswith(b"K")
    msg_id = int(reply[1:])
    with open(home.q("todo", str(msg_id)), "rb") as fh:
        assert fh.read().endswith(b"Fa@example.org\0Tb@example.net\0")
    with open(home.split_path("mess", msg_id), "rb") as fh:
        assert fh.read().endswith(b"Subject: hi\n\nhello\n")
    for f in (home.q("todo", str(msg_id)), home.split_path("mess", msg_id)):
        os.unlink(f)


async def fake_qmqp_server(
    answer: asyncio.Future[bytes], got: asyncio.Future[bytes]
) -> tuple[asyncio.Server, int]:
    """A loopback QMQP server that replies with whatever ``answer`` resolves to."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        packet = await read_frame(reader, 1 << 20)
        got.set_result(packet or b"")
        reply = await answer
        if reply:
            writer.write(netstring.encode(reply))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    sock: socket.socket = server.sockets[0]
    return server, sock.getsockname()[1]


@pytest.mark.parametrize(
    ("qmqp_says", "client_hears"),
    [(b"Kok qp 4242", b"K4242"), (b"", b"Z"), (b"Dno such user", b"Dno such user")],
)
def test_forwarder_answers_only_after_the_qmqp_server(
    home: Home, tmp_path: Path, qmqp_says: bytes, client_hears: bytes
) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bytes] = loop.create_future()
        got: asyncio.Future[bytes] = loop.create_future()
        qserver, port = await fake_qmqp_server(answer, got)
        write_control(Path(home.root), "qmqpservers", f"127.0.0.1:{port}\n")
        fwd = Forwarder(home)
        path = str(tmp_path / "f.sock")
        async with unix_server(fwd.server, path):
            client = asyncio.ensure_future(
                exchange(path, HEADER + BODY + netstring.encode(GOOD_ENV))
            )
            packet = await asyncio.wait_for(got, 30)
            assert b"hello\n" in packet
            assert b"b@example.net" in packet
            # the server has the message but has not answered: nor has the forwarder
            await asyncio.sleep(0.2)
            assert not client.done()
            answer.set_result(qmqp_says)
            reply = await asyncio.wait_for(client, 30)
        qserver.close()
        assert reply.startswith(client_hears), reply

    before = queue_files(home)
    asyncio.run(run())
    assert queue_files(home) == before, "a mini node must write nothing to the queue"
