"""local.maildircommit: Maildir copies written, then made durable as one group.

Real files in real Maildirs; strace (when installed) shows that a group of
copies costs two syncs in all, and that each name reaches new/ only after
the data sync.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pyqmail.local import maildircommit
from tests.harness import call_names, needs_strace, strace_python

PARTS = (b"Return-Path: <a@example.org>\n", b"Delivered-To: joe@example.net\n", b"hi\n")


def maildir(path: Path) -> Path:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True)
    return path


@pytest.fixture(params=[True, False], ids=["tmpfile", "named-tmp"])
def tmp_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways of writing a copy: anonymous O_TMPFILE, and qmail's named tmp/ file."""
    if request.param and not maildircommit.USE_TMPFILE:
        pytest.skip("no O_TMPFILE or /proc here")
    monkeypatch.setattr(maildircommit, "USE_TMPFILE", request.param)
    return bool(request.param)


def test_a_group_lands_in_new_with_its_bytes_and_leaves_tmp_empty(
    tmp_path: Path, tmp_mode: bool
) -> None:
    a, b = maildir(tmp_path / "a"), maildir(tmp_path / "b")
    copies = [
        maildircommit.write("./a/", str(a), "k1.host", PARTS),
        maildircommit.write("./a/", str(a), "k2.host", PARTS),
        maildircommit.write("./b/", str(b), "k1.host", PARTS),
    ]
    # written, not yet delivered: nothing in new/ before the commit
    assert os.listdir(a / "new") == []
    assert os.listdir(b / "new") == []
    assert len(os.listdir(a / "tmp")) == (0 if tmp_mode else 2)
    maildircommit.commit(copies)
    assert [c.error for c in copies] == [None, None, None]
    assert sorted(os.listdir(a / "new")) == ["k1.host", "k2.host"]
    assert os.listdir(b / "new") == ["k1.host"]
    assert (a / "new" / "k2.host").read_bytes() == b"".join(PARTS)
    assert os.listdir(a / "tmp") == []
    assert os.listdir(b / "tmp") == []
    assert all(c.fd == -1 for c in copies)  # every descriptor closed


def test_one_failed_link_fails_only_its_copy(tmp_path: Path, tmp_mode: bool) -> None:
    good, bad = maildir(tmp_path / "good"), maildir(tmp_path / "bad")
    copies = [
        maildircommit.write("./bad/", str(bad), "k.host", PARTS),
        maildircommit.write("./good/", str(good), "k.host", PARTS),
    ]
    (bad / "new").rmdir()  # the user removed it meanwhile
    maildircommit.commit(copies)
    assert copies[0].error is not None
    assert "./bad/" in copies[0].error
    assert "#4.3.0" in copies[0].error
    assert copies[1].error is None
    assert os.listdir(good / "new") == ["k.host"]
    assert os.listdir(bad / "tmp") == []


def test_an_earlier_copy_under_the_name_is_the_delivery(tmp_path: Path, tmp_mode: bool) -> None:
    """DESIGN 1a: EEXIST at link means an earlier attempt delivered; no second file."""
    box = maildir(tmp_path / "m")
    (box / "new" / "k.host").write_bytes(b"the first copy\n")
    again = maildircommit.write("./m/", str(box), "k.host", PARTS)
    present = maildircommit.present("./m/", str(box), "k.host")
    maildircommit.commit([again, present])
    assert again.error is None
    assert present.error is None
    assert os.listdir(box / "new") == ["k.host"]
    assert (box / "new" / "k.host").read_bytes() == b"the first copy\n"
    assert os.listdir(box / "tmp") == []


def test_a_missing_tmp_dir_is_an_error_naming_the_step(tmp_path: Path, tmp_mode: bool) -> None:
    box = maildir(tmp_path / "m")
    (box / "tmp").rmdir()
    with pytest.raises(maildircommit.CopyError) as info:
        maildircommit.write("./m/", str(box), "k.host", PARTS)
    assert info.value.what == "open tmp file in"
    assert os.listdir(box / "new") == []


GROUP = """
import os, sys
from pyqmail.local import maildircommit
from tests.harness import call_names, needs_strace, strace_python
from pyqmail.unix import durable
durable.set_mode(sys.argv[1])
maildircommit.USE_TMPFILE = sys.argv[2] == "1"
base = sys.argv[3]
if sys.argv[4] == "present":  # what a retry finds: only the name to sync
    open(os.path.join(base, "new", "k.host"), "wb").close()
    copies = [maildircommit.present("./m/", base, "k.host")]
else:
    copies = [maildircommit.write("./m/", base, f"k{i}.host", [b"x" * 4096]) for i in range(6)]
print("commit", file=sys.stderr, flush=True)
maildircommit.commit(copies)
assert all(c.error is None for c in copies)
print("done")
"""


def traced(tmp_path: Path, mode: str, tmpfile: bool, what: str = "write") -> list[str]:
    box = maildir(tmp_path / "m")
    out = strace_python(
        GROUP,
        *(mode, "1" if tmpfile else "0", str(box), what),
        trace="syncfs,fsync,fdatasync,link,linkat,write",
    )
    assert out.stdout.strip() == "done"
    assert len(os.listdir(box / "new")) == (1 if what == "present" else 6)
    lines = out.stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if "commit" in line)
    return [name for name in call_names(lines[start + 1 :]) if not name.endswith("write")]


@needs_strace
@pytest.mark.parametrize("tmpfile", [True, False])
def test_a_group_of_six_costs_two_syncfs_data_before_names(tmp_path: Path, tmpfile: bool) -> None:
    if tmpfile and not maildircommit.USE_TMPFILE:
        pytest.skip("no O_TMPFILE or /proc here")
    calls = traced(tmp_path, "syncfs", tmpfile)
    assert calls[0] == "syncfs"  # the data of all six, before any name
    assert calls[1:7] == ["linkat" if tmpfile else "link"] * 6
    assert calls[7:] == ["syncfs"]  # the names, all six at once


@needs_strace
def test_fsync_mode_syncs_each_file_before_the_names_then_the_directory(tmp_path: Path) -> None:
    calls = traced(tmp_path, "fsync", False)
    assert calls[:6] == ["fsync"] * 6
    assert calls[6:12] == ["link"] * 6
    assert calls[12:] == ["fsync"]  # new/ once


@needs_strace
@pytest.mark.parametrize(("mode", "call"), [("syncfs", "syncfs"), ("fsync", "fsync")])
def test_a_copy_found_from_an_earlier_attempt_has_its_name_synced(
    tmp_path: Path, mode: str, call: str
) -> None:
    """The attempt that linked it may have died before syncing new/: the retry
    that reports it delivered makes sure the name is on disk first."""
    assert traced(tmp_path, mode, False, "present") == [call]
