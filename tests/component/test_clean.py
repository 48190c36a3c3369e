"""qmail-clean as a real process over a real queue (qmail-files §6.6).

Its sweep removes abandoned message bodies (old, and with no intd, todo or
info name) and nothing else; and it carries out every request it has read
even when send vanishes before hearing the answers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pyqmail.clean.main import MAX_AGE_S
from pyqmail.config import Home
from pyqmail.ipc.frames import FrameBuffer, pack
from tests.harness import wait_until


@pytest.fixture
def home(home: Path) -> Home:
    return Home(str(home))


@contextmanager
def running_clean(home: Home) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log = Path(home.root) / "log" / "clean.log"
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyqmail.clean", "--home", home.root],
            stdout=fh,
            stderr=fh,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_until(lambda: os.path.exists(home.socket("clean")), 20, "clean's socket")
        yield proc, log
    finally:
        os.kill(proc.pid, signal.SIGCONT)  # in case a test stopped it
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_message(home: Home, msg_id: int, *names: str, age: float = 0) -> str:
    """mess/S/N plus the given other names (intd, todo, info); mess aged by age."""
    mess = home.split_path("mess", msg_id)
    Path(mess).write_bytes(b"Subject: x\n\nbody\n")
    for name in names:
        path = home.split_path("info", msg_id) if name == "info" else home.q(name, str(msg_id))
        Path(path).write_bytes(b"u0\0p0\0Fa@b\0")
    if age:
        past = time.time() - age
        os.utime(mess, (past, past))
    return mess


def test_sweep_removes_only_old_bodies_with_no_other_name(home: Home) -> None:
    old = MAX_AGE_S + 3600
    orphan = make_message(home, 1001, age=old)
    other_split_orphan = make_message(home, 1002, age=old)
    young_orphan = make_message(home, 1003, age=MAX_AGE_S - 3600)  # maybe still arriving
    kept = [
        make_message(home, 1004, "todo", age=old),  # queued, send not yet at it
        make_message(home, 1005, "intd", age=old),  # the writer's, before commit
        make_message(home, 1006, "info", age=old),  # a message send owns
        young_orphan,
    ]
    Path(home.q("mess", "0", "not-a-number")).write_bytes(b"x")
    with running_clean(home) as (_proc, log):
        wait_until(lambda: "mess sweep removed" in log.read_text(), 30, "the sweep's summary")
        text = log.read_text()
    assert "mess sweep removed 2 abandoned message(s)" in text
    assert not os.path.exists(orphan)
    assert not os.path.exists(other_split_orphan)
    for path in kept:
        assert os.path.exists(path), path
    assert os.path.exists(home.q("mess", "0", "not-a-number"))
    assert os.path.exists(home.q("todo", "1004"))


def test_a_fresh_queue_sweep_removes_nothing(home: Home) -> None:
    """The recent timestamps a live writer leaves keep a body safe."""
    body = make_message(home, 2001)
    with running_clean(home) as (_proc, log):
        wait_until(lambda: "mess sweep removed" in log.read_text(), 30, "the sweep's summary")
    assert os.path.exists(body)
    assert "mess sweep removed 0 abandoned message(s)" in log.read_text()


def request(home: Home, cmds: list[bytes]) -> list[bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(home.socket("clean"))
        s.sendall(b"".join(pack(c) for c in cmds))
        frames = FrameBuffer()
        got: list[bytes] = []
        while len(got) < len(cmds):
            data = s.recv(4096)
            if not data:
                break
            got += frames.feed(data)
        return got


def test_requests_read_are_carried_out_when_send_vanishes(home: Home) -> None:
    """Send asks for 200 removals and dies before any answer: clean's first
    reply fails (EPIPE), and it still removes every message asked for."""
    ids = range(3000, 3200)
    for n in ids:
        make_message(home, n, "intd")
    with running_clean(home) as (proc, log):
        assert request(home, [b"foop/10"]) == [b"foop/10\0+"]  # it is serving
        os.kill(proc.pid, signal.SIGSTOP)  # the whole exchange happens while it sleeps
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(home.socket("clean"))
            s.sendall(b"".join(pack(b"foop/%d" % n) for n in ids))
            s.close()  # send is gone before clean reads a byte
        finally:
            os.kill(proc.pid, signal.SIGCONT)

        def all_gone() -> bool:
            return not any(os.path.exists(home.split_path("mess", n)) for n in ids)

        wait_until(all_gone, 30, "clean to carry out every request")
        assert not any(os.path.exists(home.q("intd", str(n))) for n in ids)
        assert "send stopped listening" in log.read_text()
        # and it still serves the next send
        assert request(home, [b"todo/3000", b"bogus"]) == [b"todo/3000\0+", b"bogus\0x"]


def test_done_removes_todo_and_mess_of_a_message_finished_from_todo(home: Home) -> None:
    """done/N: a message send finished in its first attempt (no info/) goes
    whole; other messages' names are untouched; bad ids are refused."""
    make_message(home, 4001, "todo")
    make_message(home, 4002, "todo")
    with running_clean(home):
        got = request(home, [b"done/4001", b"done/x1", b"done/4003"])
        assert got == [b"done/4001\0+", b"done/x1\0x", b"done/4003\0+"]  # 4003: long gone
    assert not os.path.exists(home.q("todo", "4001"))
    assert not os.path.exists(home.split_path("mess", 4001))
    assert os.path.exists(home.q("todo", "4002"))
    assert os.path.exists(home.split_path("mess", 4002))


def test_done_keeps_the_body_of_a_message_preprocessed_again(home: Home) -> None:
    """A done/N read late, after a restarted send wrote info/S/N again from
    the todo/N still there: the body stays for the queued message."""
    make_message(home, 4005, "todo", "info")
    with running_clean(home):
        assert request(home, [b"done/4005"]) == [b"done/4005\0+"]
    assert not os.path.exists(home.q("todo", "4005"))
    assert os.path.exists(home.split_path("mess", 4005))
