"""Finished messages' queue files are reused for new ones (queue/spare.py).

clean moves a done message's todo/N and mess/S/N into queue/spare/ instead
of unlinking them, but only a file nothing else has open; the writer takes
a spare under the new message's name, overwrites it and cuts it to length.
clean runs as a real process; the writer in-process on a real Unix socket.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest

from pyqmail.config import Home
from pyqmail.queue import spare
from pyqmail.queue import writer as writer_mod
from tests.component.test_clean import make_message, request, running_clean
from tests.component.test_writer_connections import long_message, submit_each
from tests.harness import init_home

ENV = b"Fa@example.org\0Tb@example.net\0\0"


@pytest.fixture
def home(tmp_path: Path) -> Home:
    root = tmp_path / "qmail"
    init_home(root)
    return Home(str(root))


def spares(home: Home) -> list[str]:
    return sorted(os.listdir(spare.spare_dir(home)))


def test_clean_moves_a_done_message_into_spare_and_keeps_a_file_held_open(home: Home) -> None:
    reused = make_message(home, 5001, "todo")
    inodes = {os.stat(reused).st_ino, os.stat(home.q("todo", "5001")).st_ino}
    held = make_message(home, 5002, "todo")
    linked = make_message(home, 5003, "todo")
    os.link(linked, home.q("pid", "extra-name"))
    make_message(home, 5004, "todo")
    os.link(home.q("todo", "5004"), home.q("pid", "envelope-name"))
    # what a .qmail program's child that kept its stdin would hold
    fd = os.open(held, os.O_RDONLY)
    try:
        with running_clean(home):
            got = request(home, [b"done/5001", b"done/5002", b"done/5003", b"done/5004"])
        assert got == [b"done/5001\0+", b"done/5002\0+", b"done/5003\0+", b"done/5004\0+"]
        # every name is gone from the queue
        for msg_id in (5001, 5002, 5003, 5004):
            assert not os.path.exists(home.split_path("mess", msg_id))
            assert not os.path.exists(home.q("todo", str(msg_id)))
        # the envelopes with one name, and the free body, are spares; the
        # held body and the files with a second name were unlinked
        assert spares(home) == ["e5001", "e5002", "e5003", "m5001", "m5004"]
        assert {
            os.stat(os.path.join(spare.spare_dir(home), n)).st_ino for n in ("m5001", "e5001")
        } == inodes
        assert os.pread(fd, 100, 0) == b"Subject: x\n\nbody\n"
        assert os.path.exists(home.q("pid", "extra-name"))
        assert Path(home.q("pid", "envelope-name")).read_bytes() == b"u0\0p0\0Fa@b\0"
    finally:
        os.close(fd)


def test_without_spare_dir_clean_unlinks(home: Home) -> None:
    os.rmdir(spare.spare_dir(home))
    make_message(home, 5004, "todo")
    with running_clean(home):
        assert request(home, [b"done/5004"]) == [b"done/5004\0+"]
    assert not os.path.exists(home.split_path("mess", 5004))
    assert not os.path.exists(home.q("todo", "5004"))
    assert not os.path.exists(spare.spare_dir(home))


def _plant(home: Home, name: str, size: int) -> int:
    path = os.path.join(spare.spare_dir(home), name)
    Path(path).write_bytes(b"OLD MESSAGE " * (size // 12))
    return os.stat(path).st_ino


def test_the_writer_reuses_spares_cut_to_the_new_length(home: Home, tmp_path: Path) -> None:
    body_inodes = {_plant(home, f"m{n}", 20_000) for n in (1, 2, 3)}
    env_inodes = {_plant(home, f"e{n}", 2_000) for n in (1, 2, 3)}
    bodies = [b"Subject: %d\n\nnew body %d\n" % (n, n) for n in range(3)]

    results = submit_each(home, tmp_path, bodies, ENV)
    assert [status for status, _ in results] == ["K"] * 3
    for body, (_, msg_id) in zip(bodies, results, strict=True):
        mess = Path(home.split_path("mess", msg_id)).read_bytes()
        assert mess.startswith(b"Received: (qmail ")
        assert mess.split(b"\n", 1)[1] == body
        todo = Path(home.q("todo", str(msg_id))).read_bytes()
        assert re.fullmatch(rb"u\d+\0p\d+\0Fa@example\.org\0Tb@example\.net\0", todo), todo
    used_bodies = {os.stat(home.split_path("mess", m)).st_ino for _, m in results}
    used_envs = {os.stat(home.q("todo", str(m))).st_ino for _, m in results}
    assert used_bodies == body_inodes
    assert used_envs == env_inodes
    assert spares(home) == []


def test_a_spare_never_replaces_an_existing_name(home: Home) -> None:
    _plant(home, "m7", 100)
    dest = home.split_path("mess", 7007)
    Path(dest).write_bytes(b"a queued message")
    taker = spare.Spares(home)
    with pytest.raises(FileExistsError):
        taker.take(spare.BODY, dest)
    assert Path(dest).read_bytes() == b"a queued message"
    assert spares(home) == ["m7"]
    assert taker.take(spare.ENVELOPE, home.q("intd", "7007")) == -1  # no envelope spares


@pytest.mark.skipif(
    not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat("/tmp").st_dev,
    reason="no second filesystem at /dev/shm",
)
def test_a_spare_that_cannot_be_moved_there_gives_way_to_a_new_file(home: Home) -> None:
    _plant(home, "m8", 100)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as elsewhere:
        # another filesystem: rename(2) says EXDEV, and the writer makes a new file
        assert spare.Spares(home).take(spare.BODY, os.path.join(elsewhere, "8008")) == -1
    assert spares(home) == ["m8"]


def test_a_big_message_streams_into_a_longer_spare_and_is_cut_to_length(
    home: Home, tmp_path: Path
) -> None:
    inode = _plant(home, "m9", 1_000_000)
    big = long_message(12_000)
    assert len(big) > writer_mod.IN_MEMORY
    [(status, msg_id)] = submit_each(home, tmp_path, [big], ENV)
    assert status == "K"
    mess = Path(home.split_path("mess", msg_id))
    assert os.stat(mess).st_ino == inode
    assert mess.read_bytes().split(b"\n", 1)[1] == big
