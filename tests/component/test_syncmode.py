"""control/syncmode: a group commit is one syncfs(2), or an fsync per file.

strace shows which system calls a batch really makes; pyqmail check names
a bad value by file and line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pyqmail.unix import durable
from tests.harness import call_names, init_home, needs_strace, pyqmail, strace_python

BATCH = """
import os, sys
from pyqmail.unix import durable
durable.set_mode(sys.argv[1])
base = sys.argv[2]
fds = []
for i in range(4):
    fd = os.open(os.path.join(base, "a", str(i)), os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"x" * 4096)
    fds.append(fd)
in_dirs = sys.argv[3] == "in-dirs"  # the files are in the directories given
dirs = [os.path.join(base, "a"), os.path.join(base, "b")]
durable.fsync_fds_and_dirs(fds, dirs, fds_in_dirs=in_dirs)
durable.sync_dir(os.path.join(base, "b"))
print("done")
"""


def traced_calls(mode: str, tmp_path: Path, fds: str) -> list[str]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    out = strace_python(BATCH, mode, str(tmp_path), fds, trace="syncfs,fsync,fdatasync")
    assert out.stdout.strip() == "done"
    return call_names(out.stderr.splitlines())


FDS = pytest.mark.parametrize("fds", ["in-dirs", "anywhere"])


@needs_strace
@FDS
def test_syncfs_mode_makes_a_batch_one_syscall(tmp_path: Path, fds: str) -> None:
    calls = traced_calls("syncfs", tmp_path, fds)
    # one for the batch (all on one filesystem), one for sync_dir
    assert calls == ["syncfs", "syncfs"]


@needs_strace
@FDS
def test_fsync_mode_fsyncs_every_file_and_directory(tmp_path: Path, fds: str) -> None:
    calls = traced_calls("fsync", tmp_path, fds)
    assert calls.count("fsync") == 4 + 2 + 1
    assert "syncfs" not in calls


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown sync mode"):
        durable.set_mode("sometimes")


def test_check_names_a_bad_syncmode(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    (home / "control" / "syncmode").write_text("sometimes\n")
    out = pyqmail("check", "--home", str(home))
    assert out.returncode == 1
    assert f"{home}/control/syncmode:1:" in out.stdout
    (home / "control" / "syncmode").write_text("fsync\n")
    out = pyqmail("check", "--home", str(home))
    assert out.returncode == 0, out.stdout
