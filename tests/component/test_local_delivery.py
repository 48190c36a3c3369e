"""local.deliver with real files: Maildir delivery, exactly-once retries, safety checks.

qmail-protocols §8.1 (Maildir delivery), qmail-files §5.2 (safety checks),
§5.8 (Delivered-To loop detection); DESIGN 1a (deterministic Maildir names).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from pyqmail.config import Home
from pyqmail.formats.assign import UserMatch, parse_assign
from pyqmail.formats.maildir import safe_host
from pyqmail.local.deliver import EXIT_OK, EXIT_PERM, EXIT_TEMP, LocalJob, deliver

SENDER = b"alice@example.org"
RCPT = b"joe@example.net"
KEY = "1710231302.Q26902R0"
MESSAGE = b"Received: (qmail 1 invoked by uid 1000); 12 Mar 2024 08:14:59 -0000\n" + (
    b"Subject: hi\n\nbody\n"
)


@dataclass
class Box:
    qmail: Home
    home: Path
    maildir: Path
    user: UserMatch
    message: Path

    def job(self, *, retry: bool, key: str = KEY, message: bytes | None = None) -> LocalJob:
        if message is not None:
            self.message.write_bytes(message)
        return LocalJob(str(self.message), SENDER, RCPT, key, retry)

    def files(self, sub: str) -> list[str]:
        return sorted(os.listdir(self.maildir / sub))


@pytest.fixture
def box(tmp_path: Path) -> Box:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    maildir = home / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    dot = home / ".qmail"
    dot.write_text("./Maildir/\n")
    dot.chmod(0o644)
    assign = parse_assign(f"=joe:joe:{os.getuid()}:{os.getgid()}:{home}:::\n.\n")
    user = assign.lookup("joe")
    assert user is not None
    message = tmp_path / "mess"
    message.write_bytes(MESSAGE)
    return Box(Home(str(tmp_path / "qmail")), home, maildir, user, message)


def _name() -> str:
    return f"{KEY}.{safe_host(socket.gethostname())}"


def test_maildir_delivery_writes_return_path_delivered_to_and_message(box: Box) -> None:
    """§8.1: Return-Path line, Delivered-To line, then the message verbatim."""
    code, report = deliver(box.qmail, box.job(retry=False), box.user, "./Mailbox")
    assert (code, report) == (EXIT_OK, "did 1+0+0\n")
    assert box.files("new") == [_name()]
    assert box.files("tmp") == []
    data = (box.maildir / "new" / _name()).read_bytes()
    assert data == b"Return-Path: <alice@example.org>\nDelivered-To: joe@example.net\n" + MESSAGE


def test_aliasempty_is_used_without_a_dot_qmail(box: Box) -> None:
    """§5.1: dash "" and no .qmail/.qmaildefault -> the default delivery instruction."""
    (box.home / ".qmail").unlink()
    code, _ = deliver(box.qmail, box.job(retry=False), box.user, "./Maildir/")
    assert code == EXIT_OK
    assert box.files("new") == [_name()]


@pytest.mark.parametrize("retry", [True, False])
def test_repeated_delivery_does_not_duplicate(box: Box, retry: bool) -> None:
    """DESIGN 1a: a retry with the same key finds the first copy (retry=True) or
    hits EEXIST on link (retry=False); either way one file, the original one."""
    assert deliver(box.qmail, box.job(retry=False), box.user, "")[0] == EXIT_OK
    first = os.stat(box.maildir / "new" / _name())
    code, report = deliver(box.qmail, box.job(retry=retry), box.user, "")
    assert (code, report) == (EXIT_OK, "did 1+0+0\n")
    assert box.files("new") == [_name()]
    assert box.files("tmp") == []
    assert box.files("cur") == []
    assert os.stat(box.maildir / "new" / _name()).st_ino == first.st_ino


def test_retry_finds_the_copy_a_reader_moved_to_cur(box: Box) -> None:
    """§8.3: a reader renamed new/X to cur/X:2,S; the retry must not deliver again."""
    assert deliver(box.qmail, box.job(retry=False), box.user, "")[0] == EXIT_OK
    os.rename(box.maildir / "new" / _name(), box.maildir / "cur" / f"{_name()}:2,S")
    code, _ = deliver(box.qmail, box.job(retry=True), box.user, "")
    assert code == EXIT_OK
    assert box.files("new") == []
    assert box.files("cur") == [f"{_name()}:2,S"]
    assert box.files("tmp") == []


def test_a_different_key_is_a_new_delivery(box: Box) -> None:
    assert deliver(box.qmail, box.job(retry=True), box.user, "")[0] == EXIT_OK
    assert deliver(box.qmail, box.job(retry=True, key=KEY + "1"), box.user, "")[0] == EXIT_OK
    assert len(box.files("new")) == 2


def test_delivered_to_loop_is_permanent(box: Box) -> None:
    """§5.8: a header line equal to our Delivered-To line -> exit 100, nothing written."""
    looping = b"Delivered-To: joe@example.net\nSubject: hi\n\nbody\n"
    code, report = deliver(box.qmail, box.job(retry=False, message=looping), box.user, "")
    assert code == EXIT_PERM
    assert "looping" in report
    assert "#5.4.6" in report
    assert box.files("new") == []


@pytest.mark.parametrize(
    "message",
    [
        b"Subject: hi\n\nDelivered-To: joe@example.net\n",  # in the body
        b"\nDelivered-To: joe@example.net\n",  # empty header: everything is body
        b"X-Note: a\rDelivered-To: joe@example.net\n\nbody\n",  # bare CR is no line end
        b"Delivered-To: JOE@example.net\n\nbody\n",  # case-sensitive
        b"Delivered-To: joe@example.net \n\nbody\n",  # byte-for-byte, incl. blanks
    ],
)
def test_delivered_to_outside_the_header_is_not_a_loop(box: Box, message: bytes) -> None:
    """§5.8: only header lines (up to the first empty line) equal to DTLINE count."""
    code, report = deliver(box.qmail, box.job(retry=False, message=message), box.user, "")
    assert (code, report) == (EXIT_OK, "did 1+0+0\n")


def test_world_writable_home_is_temporary(box: Box) -> None:
    """§5.2: ``Uh-oh: home directory is writable. (#4.7.0)`` -> exit 111."""
    box.home.chmod(0o757)
    code, report = deliver(box.qmail, box.job(retry=False), box.user, "")
    assert code == EXIT_TEMP
    assert report == "Uh-oh: home directory is writable. (#4.7.0)"
    assert box.files("new") == []


def test_world_writable_dot_qmail_is_temporary(box: Box) -> None:
    (box.home / ".qmail").chmod(0o646)
    code, report = deliver(box.qmail, box.job(retry=False), box.user, "")
    assert code == EXIT_TEMP
    assert report == "Uh-oh: .qmail file is writable. (#4.7.0)"
    assert box.files("new") == []


def test_missing_maildir_is_temporary(box: Box) -> None:
    """§8.1: any Maildir failure is temporary; the message stays queued."""
    (box.home / ".qmail").write_text("./NoSuchMaildir/\n")
    code, _ = deliver(box.qmail, box.job(retry=False), box.user, "")
    assert code == EXIT_TEMP


def test_symlinked_dot_qmail_is_followed(box: Box) -> None:
    """qmail opens .qmail files with open_read: a symlink works (common for lists)."""
    real = box.home / "rules"
    real.write_text("./Maildir/\n")
    real.chmod(0o644)
    (box.home / ".qmail").unlink()
    (box.home / ".qmail").symlink_to(real)
    assert deliver(box.qmail, box.job(retry=False), box.user, "./Nothing/")[0] == EXIT_OK
    assert box.files("new") == [_name()]


def test_fifo_dot_qmail_defers_without_hanging(box: Box) -> None:
    (box.home / ".qmail").unlink()
    os.mkfifo(box.home / ".qmail")
    code, report = deliver(box.qmail, box.job(retry=False), box.user, "./Maildir/")
    assert (code, report) == (EXIT_TEMP, "Unable to read .qmail: not a regular file. (#4.2.1)")


def test_every_program_reads_the_whole_message(box: Box) -> None:
    """qmail-local rewinds fd 0 for each program line."""
    (box.home / ".qmail").write_text("|cat > one\n|cat > two\n")
    code, report = deliver(box.qmail, box.job(retry=False), box.user, "")
    assert (code, report) == (EXIT_OK, "did 0+0+2\n")
    assert (box.home / "one").read_bytes() == MESSAGE
    assert (box.home / "two").read_bytes() == MESSAGE


def test_program_exit_99_keeps_earlier_forwards_and_skips_later_lines(box: Box) -> None:
    """§5.4: 99 stops; forwards already collected are still sent (here: no queue
    writer, so the forward's failure shows they were attempted)."""
    (box.home / ".qmail").write_text("&x@example.org\n|exit 99\n./Maildir/\n")
    code, report = deliver(box.qmail, box.job(retry=False), box.user, "")
    assert code == EXIT_TEMP
    assert "qq unable to reach the queue writer" in report
    assert box.files("new") == []


def test_mbox_over_quota_defers_and_soft_limit_lets_one_cross(box: Box) -> None:
    (box.home / ".qmail").write_text("./mbox\n")
    Path(box.qmail.root, "control").mkdir(parents=True)
    Path(box.qmail.control("quotas")).write_text(":10\n")
    assert deliver(box.qmail, box.job(retry=False), box.user, "")[0] == EXIT_OK
    code, report = deliver(box.qmail, box.job(retry=False), box.user, "")
    assert (code, report) == (EXIT_TEMP, "Sorry, ./mbox is over its quota of 10 bytes. (#4.2.2)")


def test_maildirplusplus_folder_is_made_and_counts_for_the_user(box: Box) -> None:
    """A missing ./Maildir/.Folder/ under a Maildir is created (with maildirfolder);
    the quota counts the whole Maildir, folders included."""
    (box.home / ".qmail").write_text("./Maildir/.Lists/\n")
    Path(box.qmail.root, "control").mkdir(parents=True)
    Path(box.qmail.control("quotas")).write_text("joe:100\n")
    (box.maildir / "cur" / "big:2,S").write_bytes(b"x" * 100)
    code, report = deliver(box.qmail, box.job(retry=False), box.user, "")
    assert (code, report) == (
        EXIT_TEMP,
        "Sorry, ./Maildir/.Lists/ is over its quota of 100 bytes. (#4.2.2)",
    )
    assert (box.maildir / ".Lists" / "maildirfolder").exists()
    (box.maildir / "cur" / "big:2,S").unlink()
    assert deliver(box.qmail, box.job(retry=False), box.user, "")[0] == EXIT_OK
    assert len(os.listdir(box.maildir / ".Lists" / "new")) == 1


def test_half_made_maildirplusplus_folder_is_completed(box: Box) -> None:
    """A crash while making the folder left only .Lists/cur: the retry finishes it."""
    (box.home / ".qmail").write_text("./Maildir/.Lists/\n")
    (box.maildir / ".Lists" / "cur").mkdir(parents=True)
    assert deliver(box.qmail, box.job(retry=True), box.user, "")[0] == EXIT_OK
    assert sorted(os.listdir(box.maildir / ".Lists")) == [
        "cur",
        "maildirfolder",
        "new",
        "tmp",
    ]


def test_missing_plain_maildir_is_not_created(box: Box) -> None:
    (box.home / ".qmail").write_text("./Other/\n")
    assert deliver(box.qmail, box.job(retry=False), box.user, "")[0] == EXIT_TEMP
    assert not (box.home / "Other").exists()


HOLDER = """\
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
if sys.argv[2] == "lockf":
    fcntl.lockf(fd, fcntl.LOCK_EX)
else:
    fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(0.5)
os.write(fd, b"From holder Thu Jan 01 00:00:00 1970\\nSubject: holder\\n\\nx\\n\\n")
"""


@pytest.mark.parametrize("kind", ["lockf", "flock"])
def test_mbox_delivery_waits_for_a_readers_lock(box: Box, kind: str) -> None:
    """§5.6: an exclusive lock; readers use fcntl (mutt, procmail) or flock, so both."""
    import mailbox
    import subprocess
    import sys

    (box.home / ".qmail").write_text("./mbox\n")
    mbox = box.home / "mbox"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(mbox), kind], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        assert deliver(box.qmail, box.job(retry=False), box.user, "")[0] == EXIT_OK
    finally:
        holder.wait(timeout=30)
        assert holder.stdout is not None
        holder.stdout.close()
    box_ = mailbox.mbox(str(mbox), create=False)
    try:
        assert [m["Subject"] for m in box_] == ["holder", "hi"]
    finally:
        box_.close()
