"""The Maildir as qmail-pop3d sees it: order, UIDL, DELE/RSET, QUIT's renames."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pyqmail.pop3d.mailbox import TMP_MAX_AGE_S, Mailbox


def maildir(tmp_path: Path) -> Path:
    md = tmp_path / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True)
    return md


def put(md: Path, sub: str, name: str, data: bytes, mtime: float) -> Path:
    path = md / sub / name
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def test_listing_order_uidl_and_skipped_names(tmp_path: Path) -> None:
    md = maildir(tmp_path)
    now = time.time()
    put(md, "cur", "200.b.host:2,S", b"bb", now - 100)
    put(md, "new", "300.c.host", b"ccc", now - 50)
    put(md, "new", "100.a.host", b"a", now - 200)
    put(md, "new", ".hidden", b"x", now - 300)
    (md / "new" / "subdir").mkdir()
    box = Mailbox.open(str(md))
    assert [m.uid for m in box.messages] == ["100.a.host", "200.b.host", "300.c.host"]
    assert box.stat() == (3, 6)
    # same mtime: ties broken by name, so the numbering is the same every time
    put(md, "new", "050.z.host", b"z", now - 50)
    again = Mailbox.open(str(md))
    assert [m.uid for m in again.messages][-2:] == ["050.z.host", "300.c.host"]


def test_dele_marks_rset_restores_quit_applies(tmp_path: Path) -> None:
    md = maildir(tmp_path)
    now = time.time()
    put(md, "new", "1.a.h", b"a", now - 3)
    put(md, "cur", "2.b.h:2,S", b"b", now - 2)
    put(md, "new", "3.c.h", b"c", now - 1)
    box = Mailbox.open(str(md))
    assert box.delete(1)
    assert not box.delete(1)
    assert not box.delete(4)
    assert box.get(1) is None
    assert box.stat() == (2, 2)
    assert (md / "new" / "1.a.h").exists()  # nothing happens before QUIT
    box.reset()
    assert box.stat() == (3, 3)
    box.delete(2)
    assert box.commit() == []
    assert sorted(os.listdir(md / "new")) == []
    assert sorted(os.listdir(md / "cur")) == ["1.a.h:2,", "3.c.h:2,"]


def test_commit_tolerates_a_message_another_session_removed(tmp_path: Path) -> None:
    md = maildir(tmp_path)
    put(md, "new", "1.a.h", b"a", time.time() - 3)
    box = Mailbox.open(str(md))
    box.delete(1)
    (md / "new" / "1.a.h").unlink()
    assert box.commit() == []


def test_old_tmp_files_are_cleaned(tmp_path: Path) -> None:
    md = maildir(tmp_path)
    now = time.time()
    put(md, "tmp", "old", b"x", now - TMP_MAX_AGE_S - 10)
    put(md, "tmp", "young", b"x", now - 10)
    Mailbox.open(str(md))
    assert os.listdir(md / "tmp") == ["young"]
