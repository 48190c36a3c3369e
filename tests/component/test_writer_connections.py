"""The queue writer's connections carry message after message.

The writer and the client pool (ipc/queue_proto) run in-process on a real
Unix socket over a real home. What is checked: a pooled client reuses one
connection; a connection that ended in a refusal, or that the writer closed
while idle, is never used again; messages too big to hold in memory still
stream to disk, and a broken one leaves nothing behind. The last test runs
the writer under strace and checks the order of its system calls: no K
before the message's files, then its todo/ name, are durable.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from pyqmail.config import Home
from pyqmail.formats import netstring
from pyqmail.ipc.frames import read_frame
from pyqmail.ipc.queue_proto import MAGIC, SubmissionServer, WriterPool
from pyqmail.queue import writer as writer_mod
from pyqmail.queue.writer import QueueWriter
from pyqmail.unix import durable
from tests.harness import init_home, needs_strace, wait_until

ENV = b"Fa@example.org\0Tb@example.net\0\0"
TOO_LONG_ENV = b"F" + b"x" * 1000 + b"\0Tb@example.net\0\0"


@pytest.fixture
def home(tmp_path: Path) -> Home:
    root = tmp_path / "qmail"
    init_home(root)
    return Home(str(root))


class Counting:
    """The writer's protocol factory, counting the connections it accepted."""

    def __init__(self, server: SubmissionServer) -> None:
        self.server = server
        self.accepted = 0

    def __call__(self) -> asyncio.BaseProtocol:
        self.accepted += 1
        return self.server()


@asynccontextmanager
async def writer_on(home: Home, path: str, **server_args: float) -> AsyncIterator[Counting]:
    qw = QueueWriter(home)
    qw.recover()
    if server_args:
        qw.server = SubmissionServer(qw.open_message, **server_args)  # type: ignore[arg-type]
    counting = Counting(qw.server)
    server = await asyncio.get_running_loop().create_unix_server(counting, path)
    try:
        yield counting
    finally:
        server.close()
        qw.server.close()
        await asyncio.wait_for(qw.drain(), 30)
        qw.close()


async def submit(pool: WriterPool, body: bytes, env: bytes = ENV) -> tuple[str, int]:
    sub = await pool.open()
    await sub.write(body)
    res = await asyncio.wait_for(sub.finish(env), 30)
    return res.status, res.msg_id


def submit_each(
    home: Home, tmp_path: Path, bodies: list[bytes], env: bytes = ENV
) -> list[tuple[str, int]]:
    """Each body, one after another, over one pooled connection to a writer
    run for this alone: the (status, message id) of each."""

    async def run() -> list[tuple[str, int]]:
        path = str(tmp_path / "w.sock")
        async with writer_on(home, path):
            pool = WriterPool(path, b"local")
            got = [await submit(pool, body, env) for body in bodies]
            pool.close()
            return got

    return asyncio.run(run())


def long_message(lines: int) -> bytes:
    return b"".join(b"line %07d of a long message\n" % n for n in range(lines))


def queued(home: Home, msg_id: int) -> bytes:
    assert os.path.exists(home.q("todo", str(msg_id)))
    with open(home.split_path("mess", msg_id), "rb") as fh:
        return fh.read()


def queue_files(home: Home) -> list[str]:
    found = []
    for kind in ("mess", "intd", "todo"):
        for dirpath, _dirs, files in os.walk(home.q(kind)):
            found += [os.path.join(dirpath, f) for f in files]
    return sorted(found)


def test_a_pooled_client_sends_many_messages_over_one_connection(
    home: Home, tmp_path: Path
) -> None:
    async def run() -> tuple[list[tuple[str, int]], int]:
        path = str(tmp_path / "w.sock")
        async with writer_on(home, path) as counting:
            pool = WriterPool(path, b"local")
            results = [await submit(pool, b"Subject: %d\n\nbody %d\n" % (n, n)) for n in range(5)]
            pool.close()
            return results, counting.accepted

    results, accepted = asyncio.run(run())
    assert [status for status, _ in results] == ["K"] * 5
    ids = [msg_id for _, msg_id in results]
    assert len(set(ids)) == 5
    for n, msg_id in enumerate(ids):
        assert queued(home, msg_id).endswith(b"Subject: %d\n\nbody %d\n" % (n, n))
    assert accepted == 1


def test_a_refused_message_ends_its_connection(home: Home, tmp_path: Path) -> None:
    async def run() -> tuple[list[str], int]:
        path = str(tmp_path / "w.sock")
        async with writer_on(home, path) as counting:
            pool = WriterPool(path, b"local")
            statuses = [
                (await submit(pool, b"one\n"))[0],
                (await submit(pool, b"two\n", TOO_LONG_ENV))[0],
                (await submit(pool, b"three\n"))[0],
            ]
            pool.close()
            return statuses, counting.accepted

    before = queue_files(home)
    statuses, accepted = asyncio.run(run())
    assert statuses == ["K", "D", "K"]
    assert accepted == 2  # the D's connection was not used for "three"
    assert len(queue_files(home)) == len(before) + 4  # two messages: mess and todo each


def test_a_connection_the_writer_closed_while_idle_is_not_reused(
    home: Home, tmp_path: Path
) -> None:
    async def run() -> tuple[list[str], int]:
        path = str(tmp_path / "w.sock")
        async with writer_on(home, path, idle_s=0.2) as counting:
            pool = WriterPool(path, b"local")
            first = (await submit(pool, b"before\n"))[0]
            assert pool.idle == 1
            # the writer's sweep closes the idle connection, and the pool sees it
            for _ in range(600):
                if not counting.server.conns and not pool.idle:
                    break
                await asyncio.sleep(0.05)
            assert not counting.server.conns
            assert not pool.idle
            second = (await submit(pool, b"after\n"))[0]
            pool.close()
            return [first, second], counting.accepted

    statuses, accepted = asyncio.run(run())
    assert statuses == ["K", "K"]
    assert accepted == 2


def test_messages_sent_back_to_back_are_answered_in_order(home: Home, tmp_path: Path) -> None:
    def message(text: bytes) -> bytes:
        return (
            netstring.encode(MAGIC + b"\0local")
            + netstring.encode(text)
            + b"0:,"
            + netstring.encode(ENV)
        )

    async def run() -> list[bytes | None]:
        path = str(tmp_path / "w.sock")
        async with writer_on(home, path):
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(message(b"first\n") + message(b"second\n"))
            answers = [await asyncio.wait_for(read_frame(reader), 30) for _ in range(2)]
            writer.close()
            return answers

    answers = asyncio.run(run())
    assert all(a is not None and a.startswith(b"K") for a in answers), answers
    first, second = (int(a[1:]) for a in answers if a is not None)
    assert queued(home, first).endswith(b"first\n")
    assert queued(home, second).endswith(b"second\n")


def test_a_big_message_streams_to_disk_and_a_broken_one_leaves_nothing(
    home: Home, tmp_path: Path
) -> None:
    big = long_message(20_000)
    assert len(big) > writer_mod.IN_MEMORY

    async def run() -> tuple[str, int]:
        path = str(tmp_path / "w.sock")
        async with writer_on(home, path):
            pool = WriterPool(path, b"local")
            result = await submit(pool, big)
            # the same size again, but the client vanishes before the end
            sub = await pool.open()
            await sub.write(big)
            await sub.write(big[:1000])
            sub.abort()
            await asyncio.sleep(0)
            pool.close()
            return result

    before = queue_files(home)
    status, msg_id = asyncio.run(run())
    assert status == "K"
    assert queued(home, msg_id).endswith(big)
    after = queue_files(home)
    assert sorted(set(after) - set(before)) == sorted(
        [home.q("todo", str(msg_id)), home.split_path("mess", msg_id)]
    )


# -- the order of system calls ---------------------------------------------------

CALL = re.compile(r"^(\d+) +(?:<\.\.\. (\w+) resumed>|(\w+)\()(.*)$")


def parse_trace(text: str) -> list[tuple[int, int, str, str]]:
    """strace -f lines as (start, end, call, text): the line numbers where
    each call was entered and where it returned."""
    calls: list[tuple[int, int, str, str]] = []
    open_calls: dict[tuple[str, str], tuple[int, str]] = {}
    for i, line in enumerate(text.splitlines()):
        m = CALL.match(line)
        if not m:
            continue
        pid, resumed, name, rest = m.groups()
        if resumed:
            start, head = open_calls.pop((pid, resumed), (i, ""))
            calls.append((start, i, resumed, head + rest))
        elif rest.endswith("<unfinished ...>"):
            open_calls[(pid, name)] = (i, rest)
        else:
            calls.append((i, i, name, rest))
    return sorted(calls)


@needs_strace
def test_no_k_before_the_files_and_the_todo_name_are_durable(home: Home, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    # half the messages get spare files (queue/spare.py), longer than they need
    for n in range(12):
        for kind in "me":
            Path(home.q("spare", f"{kind}{n}")).write_bytes(b"junk\n" * 2000)
    proc = subprocess.Popen(
        [
            *("strace", "-f", "-qq", "-s", "400", "-o", str(trace)),
            "-e",
            "trace=openat,close,accept4,write,ftruncate,sendto,rename,renameat,renameat2,syncfs",
            *(sys.executable, "-m", "pyqmail.queue", "--home", home.root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: os.path.exists(home.writer_socket), 30, "the writer's socket")

        async def clients() -> list[tuple[str, int]]:
            pools = [WriterPool(home.writer_socket, b"local") for _ in range(4)]

            async def one(pool: WriterPool, n: int) -> list[tuple[str, int]]:
                return [await submit(pool, b"msg %d.%d\n" % (n, i)) for i in range(6)]

            got = await asyncio.gather(*(one(pool, n) for n, pool in enumerate(pools)))
            for pool in pools:
                pool.close()
            return [r for rs in got for r in rs]

        for _ in range(600):  # the socket exists a moment before listen()
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(home.writer_socket)
                    break
                except ConnectionRefusedError:
                    time.sleep(0.05)
        results = asyncio.run(clients())
    finally:
        # the writer itself, strace's child: it drains and exits, then strace does
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        for child in children:
            os.kill(int(child), signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [status for status, _ in results] == ["K"] * 24
    assert os.listdir(home.q("spare")) == []
    for msg_id in {msg_id for _, msg_id in results}:
        assert queued(home, msg_id).split(b"\n", 1)[1].startswith(b"msg ")
        assert b"junk" not in Path(home.q("todo", str(msg_id))).read_bytes()
    calls = parse_trace(trace.read_text(errors="replace"))
    syncs = [(start, end) for start, end, name, _ in calls if name == "syncfs"]
    fds: dict[str, str] = {}  # fd -> path, as opened
    written: dict[int, int] = {}  # message id -> end of its last file write
    renamed: dict[int, tuple[int, int]] = {}
    answered: dict[int, int] = {}
    for start, end, name, text in calls:
        if name == "openat" and (m := re.search(r'"([^"]+)".*= (\d+)$', text)):
            fds[m.group(2)] = m.group(1)
        elif name in ("close", "accept4"):
            fds.pop(text.split(")")[0] if name == "close" else text.rsplit("= ", 1)[-1], None)
        elif name in ("write", "ftruncate", "sendto"):
            fd = text.split(",")[0]
            path = fds.get(fd, "")
            if m := re.search(r"/(?:mess/\d+|intd)/(\d+)$", path):
                written[int(m.group(1))] = end
            if k := re.search(r'"\d+:K(\d+),"', text):
                answered[int(k.group(1))] = start
        elif name.startswith("rename") and (m := re.search(r'intd/(\d+)", .*todo/\1"', text)):
            renamed[int(m.group(1))] = (start, end)
    assert sorted(answered) == sorted(msg_id for _, msg_id in results)
    for msg_id, k_at in answered.items():
        rename_start, rename_end = renamed[msg_id]
        # a sync begun after the last write ended, and over before the rename
        assert any(written[msg_id] < s and e < rename_start for s, e in syncs), msg_id
        # a sync begun after the rename ended, and over before the K
        assert any(rename_end < s and e < k_at for s, e in syncs), msg_id


def test_a_failed_sync_answers_z_and_leaves_nothing(
    home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk that fails the commit's sync (an I/O error cannot be made on
    demand here, so the sync is made to fail once): the message is refused
    with qmail's write error and removed; the next one is queued."""
    real = durable.fsync_fds_and_dirs
    failures = [OSError(5, "Input/output error")]

    def flaky(fds: list[int], dirs: list[str], *, fds_in_dirs: bool = False) -> None:
        if failures:
            raise failures.pop()
        real(fds, dirs, fds_in_dirs=fds_in_dirs)

    monkeypatch.setattr(durable, "fsync_fds_and_dirs", flaky)

    before = queue_files(home)
    (first, _), (second, msg_id) = submit_each(
        home, tmp_path, [b"Subject: %d\n\nx\n" % n for n in range(2)]
    )
    assert first == "Z"
    assert second == "K"
    assert sorted(set(queue_files(home)) - set(before)) == sorted(
        [home.q("todo", str(msg_id)), home.split_path("mess", msg_id)]
    )
