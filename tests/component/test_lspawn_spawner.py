"""lspawn's Spawner with a worker that misbehaves: it is killed, its jobs crash.

The worker here is a real process (``sleep``) behind a real SOCK_SEQPACKET
pair whose other end the test holds, so it can answer with anything. A
mangled or unasked-for report must not be taken for any job's result: the
worker is killed and every job it held is reported as a crash (send retries
them, with the "maybe done" flag).
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from pyqmail.config import Home
from pyqmail.formats import netstring
from pyqmail.ipc.frames import FrameBuffer
from pyqmail.lspawn import main as lspawn_main
from pyqmail.lspawn.workers import encode_result
from tests.harness import init_home


class FakeWorkers:
    def __init__(self) -> None:
        self.ends: list[socket.socket] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.others: list[socket.socket] = []  # closed at the end too

    def fork(
        self, home: Home, uid: int, gid: int, close: Iterable[socket.socket]
    ) -> tuple[int, socket.socket]:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ends.append(theirs)
        proc = subprocess.Popen(["sleep", "60"])
        self.procs.append(proc)
        return proc.pid, ours


@pytest.fixture
def spawner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[lspawn_main.Spawner]:
    home = tmp_path / "qmail"
    init_home(home)
    fakes = FakeWorkers()
    monkeypatch.setattr(lspawn_main, "fork_worker", fakes.fork)
    (home / "queue" / "mess" / "3").mkdir(exist_ok=True)
    (home / "queue" / "mess" / "3" / "77").write_bytes(b"Subject: x\n\nhi\n")
    sp = lspawn_main.Spawner(Home(str(home)))
    sp.fakes = fakes  # type: ignore[attr-defined]
    yield sp
    for proc in fakes.procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    for sock in [
        sp.listener,
        *sp.conns,
        *(w.sock for w in sp.workers.values()),
        *fakes.ends,
        *fakes.others,
    ]:
        sock.close()
    sp.sel.close()


def ask(sp: lspawn_main.Spawner, n: int) -> socket.socket:
    """n requests from a pretend send; its end of the connection (closed with the spawner's)."""
    send_end, ours = socket.socketpair()
    sp.fakes.others.append(send_end)  # type: ignore[attr-defined]
    sp.conns[ours] = FrameBuffer()
    sp.sel.register(ours, selectors.EVENT_READ, "conn")
    for i in range(n):
        key = b"1700000000.Q77R0000000%d" % i
        frame = b"\0".join([b"%d" % i, b"3/77", b"a@example.org", b"postmaster@localhost"])
        sp._request(ours, frame + b"\0" + key + b"\0" + b"0")
    return send_end


def replies(sp: lspawn_main.Spawner, send_end: socket.socket, n: int) -> list[bytes]:
    sp._send_replies()
    send_end.settimeout(10)
    buf = FrameBuffer()
    got: list[bytes] = []
    while len(got) < n:
        got.extend(buf.feed(send_end.recv(65536)))
    return got


@pytest.mark.parametrize(
    "report",
    [
        b"garbage",
        netstring.encode(b"0") + netstring.encode(b"did"),  # no grouped flag
        encode_result(0, b"did 1+0+0\n") * 3,  # more results than jobs
    ],
)
def test_a_mangled_report_kills_the_worker_and_crashes_its_jobs(
    spawner: lspawn_main.Spawner, report: bytes, capfd: pytest.CaptureFixture[str]
) -> None:
    send_end = ask(spawner, 2)
    fakes: FakeWorkers = spawner.fakes  # type: ignore[attr-defined]
    assert len(fakes.procs) == 1, "both jobs queued on the one grouping worker"
    worker_end = fakes.ends[0]
    worker_end.settimeout(10)
    spawner._send_jobs()  # at the end of the loop turn: both jobs in one record
    data, fds, _, _ = socket.recv_fds(worker_end, 65536, 4)
    jobs = netstring.decode_all(data, limit=65536, max_items=4)
    assert [j.count(b"\0") for j in jobs] == [10, 10]
    assert len(fds) == 2
    for fd in fds:
        os.close(fd)
    worker_end.send(report)
    [worker] = spawner.workers.values()
    spawner._read_worker(worker.sock.fileno())
    assert not spawner.workers
    pid = fakes.procs[0].pid
    assert f"lspawn worker {pid} died with status -9" in capfd.readouterr().err  # killed, reaped
    assert sorted(replies(spawner, send_end, 2)) == [
        b"0\0Zqmail-local crashed.\n",
        b"1\0Zqmail-local crashed.\n",
    ]


def test_results_for_a_group_answer_its_jobs_in_order(spawner: lspawn_main.Spawner) -> None:
    send_end = ask(spawner, 3)
    fakes: FakeWorkers = spawner.fakes  # type: ignore[attr-defined]
    worker_end = fakes.ends[0]
    spawner._send_jobs()
    _, fds, _, _ = socket.recv_fds(worker_end, 65536, 4)
    assert len(fds) == 3
    for fd in fds:
        os.close(fd)
    worker_end.send(
        encode_result(0, b"did 1+0+0\n", grouped=True)
        + encode_result(111, b"Unable to write.", grouped=True)
        + encode_result(100, b"Sorry.", grouped=True)
    )
    [worker] = spawner.workers.values()
    spawner._read_worker(worker.sock.fileno())
    assert not worker.tasks
    assert replies(spawner, send_end, 3) == [
        b"0\0Kdid 1+0+0\n",
        b"1\0ZUnable to write.",
        b"2\0DSorry.",
    ]
