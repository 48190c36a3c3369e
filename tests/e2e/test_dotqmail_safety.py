"""Deliveries as the recipient's uid, qmail's safety deferrals, and the quota, through SMTP.

qmail-files §5.1 (unreadable .qmail -> temporary), §5.2 (safety checks),
qmail-programs (lspawn: the delivery runs as the user's uid/gid, root never).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.deliveries import send, wait_result
from tests.harness import BIN, environ_with_home, init_home, pyqmail, running_mta, write_control

BODY = b"Subject: safety\r\n\r\nbody\r\n"
NOBODY = 65534


@pytest.fixture
def user_home() -> Iterator[Path]:
    """A home outside the 0700 pytest tree, so an unprivileged uid can reach it."""
    if os.geteuid() != 0:
        pytest.skip("delivering as another uid needs root")
    top = Path(tempfile.mkdtemp(prefix="pyqmail-user-"))
    try:
        top.chmod(0o755)
        home = top / "nob"
        home.mkdir(mode=0o755)
        for sub in ("tmp", "new", "cur"):
            (home / "Maildir" / sub).mkdir(parents=True, mode=0o700)
        for path in [home, *home.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
        yield home
    finally:
        shutil.rmtree(top)


def test_delivery_runs_as_the_user_and_unreadable_dot_qmail_defers(
    tmp_path: Path, user_home: Path
) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    assign = (home / "users" / "assign").read_text().removesuffix(".\n")
    (home / "users" / "assign").write_text(
        assign
        + f"=nob:nob:{NOBODY}:{NOBODY}:{user_home}:::\n"
        + f"+nob-:nob:{NOBODY}:{NOBODY}:{user_home}:-::\n.\n"
    )
    assert "run qmail-newu" in pyqmail("check", "--home", str(home)).stdout
    # users/cdb is what lspawn reads: the edit is live only after qmail-newu
    newu = subprocess.run(
        [str(BIN / "qmail-newu")], env=environ_with_home(home), check=False, timeout=60
    )
    assert newu.returncode == 0
    assert pyqmail("check", "--home", str(home)).returncode == 0
    (user_home / ".qmail").write_text("./Maildir/\n|id -u > uid.txt\n")
    secret = user_home / ".qmail-secret"
    secret.write_text("./Maildir/\n")
    secret.chmod(0o000)
    with running_mta(home) as mta:
        send(mta, "s@example.org", ["nob@localhost", "nob-secret@localhost"], BODY)
        ok = wait_result(mta, "nob@localhost")
        deferred = wait_result(mta, "nob-secret@localhost")
    assert ok[0] == "success"
    (delivered,) = list((user_home / "Maildir" / "new").iterdir())
    assert delivered.stat().st_uid == NOBODY
    assert (user_home / "uid.txt").read_text() == f"{NOBODY}\n"
    assert deferred[0] == "deferral"
    assert "Unable to open .qmail-secret: Permission denied. (#4.2.1)" in deferred[1]


def test_safety_rules_and_quota_defer(tmp_path: Path) -> None:
    """A .qmail that is a directory, a world-writable .qmail, a sticky home, an
    executable .qmail with a file line, and a mailbox over quota all defer (4xx)."""
    home = tmp_path / "qmail"
    init_home(home)
    for name in ("dirq", "sticky", "quser"):
        assert pyqmail("adduser", name, "--home", str(home)).returncode == 0
    boxes = home / "mailboxes"
    (boxes / "dirq" / ".qmail-dir").mkdir()
    (boxes / "dirq" / ".qmail-ww").write_text("./Maildir/\n")
    (boxes / "dirq" / ".qmail-ww").chmod(0o646)
    (boxes / "dirq" / ".qmail-x").write_text("./Maildir/\n")
    (boxes / "dirq" / ".qmail-x").chmod(0o744)
    (boxes / "sticky").chmod(0o1755)
    write_control(home, "quotas", "quser:10\n")
    rcpts = ["dirq-dir@localhost", "dirq-ww@localhost", "dirq-x@localhost", "sticky@localhost"]
    with running_mta(home) as mta:
        send(mta, "s@example.org", rcpts, BODY)
        send(mta, "s@example.org", ["quser@localhost"], BODY)
        first = wait_result(mta, "quser@localhost")
        send(mta, "s@example.org", ["quser-again@localhost"], BODY)
        over = wait_result(mta, "quser-again@localhost")
        outcome = {r: wait_result(mta, r) for r in rcpts}
    assert outcome == {
        "dirq-dir@localhost": (
            "deferral",
            "Unable to read .qmail-dir: not a regular file. (#4.2.1)",
        ),
        "dirq-ww@localhost": ("deferral", "Uh-oh: .qmail file is writable. (#4.7.0)"),
        "dirq-x@localhost": (
            "deferral",
            "Uh-oh: .qmail has file delivery but has x bit set. (#4.7.0)",
        ),
        "sticky@localhost": (
            "deferral",
            "Home directory is sticky: user is editing his .qmail file. (#4.2.1)",
        ),
    }
    # soft limit: the first message lands although it crosses 10 bytes; the next waits
    assert first[0] == "success"
    assert over == ("deferral", "Sorry, ./Maildir/ is over its quota of 10 bytes. (#4.2.2)")
    assert len(list((boxes / "quser" / "Maildir" / "new").iterdir())) == 1
