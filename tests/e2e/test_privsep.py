"""Privilege separation on a system home (issue #9): needs root, as CI has.

Each component must run under its own qmail uid, and what the threat model
says an attacker inside smtpd (uid qmaild) cannot do must fail for real.
"""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyqmail.unix import accounts
from tests.harness import BIN, RunningMta, init_home, running_mta, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="privilege separation needs root and useradd (CI runs as root)",
)
EXPECTED = {
    "queue": "qmailq",
    "clean": "qmailq",
    "send": "qmails",
    "rspawn": "qmailr",
    "smtpd": "qmaild",
    "log": "qmaill",
}
TEST_USER = "pyqtestu"


@pytest.fixture(scope="module")
def reachable_code() -> Iterator[None]:
    """Let the qmail users enter the directories on the way to this Python.

    A system install puts Python somewhere they can; a test machine often
    has it under /root. Directories get o+x (enter, not list) and are put
    back afterwards.
    """
    changed: list[tuple[str, int]] = []
    while (blocked := accounts.unreachable_code()) is not None:
        mode = stat.S_IMODE(os.stat(blocked).st_mode)
        changed.append((blocked, mode))
        os.chmod(blocked, mode | stat.S_IXOTH)
    try:
        yield
    finally:
        for path, mode in reversed(changed):
            os.chmod(path, mode)


@pytest.fixture(scope="module")
def system_mta(reachable_code: None) -> Iterator[RunningMta]:
    top = tempfile.mkdtemp(prefix="pyqmail-sys-")
    os.chmod(top, 0o755)
    home = Path(top) / "qmail"
    try:
        init_home(home, "--system")
        with running_mta(home) as mta:
            yield mta
    finally:
        shutil.rmtree(top, ignore_errors=True)


def uids_of(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(v) for v in line.split()[1:]]
    raise AssertionError(f"no Uid line for {pid}")


def run_as(user: str, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    pw = pwd.getpwnam(user)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        user=pw.pw_uid,
        group=pw.pw_gid,
        extra_groups=[pw.pw_gid],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd="/",
    )


def test_each_component_runs_as_its_own_user(system_mta: RunningMta) -> None:
    for component, user in EXPECTED.items():
        want = pwd.getpwnam(user).pw_uid
        got = uids_of(system_mta.component_pid(component))
        assert got == [want] * 4, f"{component}: real/effective/saved/fs uids {got}"
    # lspawn alone keeps root, to become each recipient
    assert uids_of(system_mta.component_pid("lspawn"))[0] == 0


def test_network_facing_processes_are_limited(system_mta: RunningMta) -> None:
    limits = Path(f"/proc/{system_mta.component_pid('smtpd')}/limits").read_text()
    row = {ln[:26].strip(): ln[26:].split() for ln in limits.splitlines()[1:]}
    assert row["Max address space"][:2] == [str(2 << 30)] * 2
    assert row["Max core file size"][:2] == ["0", "0"]
    assert row["Max processes"][:2] == ["256", "256"]
    assert row["Max open files"][:2] == ["4096", "4096"]


def test_layout_modes(system_mta: RunningMta) -> None:
    home = system_mta.home
    st = os.stat(home / "users")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700)
    q = os.stat(home / "queue")
    assert q.st_uid == pwd.getpwnam("qmailq").pw_uid
    assert stat.S_IMODE(q.st_mode) & 0o007 == 0o001  # others may pass, not look


def test_virtual_user_mail_belongs_to_alias(system_mta: RunningMta) -> None:
    with smtplib.SMTP("127.0.0.1", system_mta.smtp_port, timeout=30) as s:
        s.sendmail("a@example.com", ["postmaster@localhost"], b"Subject: t\r\n\r\nhi\r\n")
    files = system_mta.wait_for_maildir("postmaster")
    assert os.stat(files[0]).st_uid == pwd.getpwnam("alias").pw_uid


def test_system_user_mail_belongs_to_that_user(system_mta: RunningMta) -> None:
    uhome = Path(tempfile.mkdtemp(prefix="pyqmail-user-"))
    os.chmod(uhome.parent, os.stat(uhome.parent).st_mode | stat.S_IXOTH)
    try:
        if accounts.lookup(TEST_USER) is None:
            subprocess.run(["useradd", "-M", "-d", str(uhome), TEST_USER], check=True)
        else:
            subprocess.run(["usermod", "-d", str(uhome), TEST_USER], check=True)
        pw = pwd.getpwnam(TEST_USER)
        for sub in ("Maildir", "Maildir/new", "Maildir/cur", "Maildir/tmp"):
            (uhome / sub).mkdir(mode=0o700, exist_ok=True)
        for path in (uhome, *uhome.rglob("*")):
            os.chown(path, pw.pw_uid, pw.pw_gid)
        os.chmod(uhome, 0o755)
        with smtplib.SMTP("127.0.0.1", system_mta.smtp_port, timeout=30) as s:
            s.sendmail("a@example.com", [f"{TEST_USER}@localhost"], b"Subject: u\r\n\r\nhi\r\n")
        new = uhome / "Maildir" / "new"
        wait_until(lambda: any(new.iterdir()), 20, f"mail in {new}")
        (delivered,) = list(new.iterdir())
        assert os.stat(delivered).st_uid == pw.pw_uid
        assert b"hi" in delivered.read_bytes()
    finally:
        shutil.rmtree(uhome, ignore_errors=True)


def test_qmaild_cannot_touch_the_queue_or_users(system_mta: RunningMta) -> None:
    home = system_mta.home
    probe = (
        "import sys\n"
        "for path, mode in (('queue/todo/1', 'w'), ('queue/mess/0/1', 'w'),\n"
        "                   ('users/assign', 'r'), ('queue/intd/1', 'w')):\n"
        "    try:\n"
        "        open(sys.argv[1] + '/' + path, mode)\n"
        "    except PermissionError:\n"
        "        print('denied', path)\n"
        "    else:\n"
        "        print('ALLOWED', path)\n"
    )
    res = run_as("qmaild", probe, str(home))
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:-1] == [
        "denied queue/todo/1",
        "denied queue/mess/0/1",
        "denied users/assign",
        "denied queue/intd/1",
    ]


LSPAWN_PROBE = (
    "import socket, sys\n"
    "from pyqmail.ipc.frames import pack\n"
    "s = socket.socket(socket.AF_UNIX)\n"
    "s.settimeout(10)\n"
    "try:\n"
    "    s.connect(sys.argv[1])\n"
    "except PermissionError:\n"
    "    sys.exit('denied')\n"
    "try:\n"
    "    s.sendall(pack(b'7', b'no/such', b'a@b', b'x@localhost', b'k1', b'0'))\n"
    "    print(repr(s.recv(200)))\n"
    "except (ConnectionResetError, BrokenPipeError):\n"
    "    print('reset')\n"
)


def test_qmaild_gets_no_service_from_lspawn(system_mta: RunningMta) -> None:
    """lspawn runs deliveries as any user: it answers send (qmails) and root alone."""
    sock = str(system_mta.home / "queue" / "lock" / "lspawn.sock")
    as_root = subprocess.run(
        [sys.executable, "-c", LSPAWN_PROBE, sock], capture_output=True, text=True, timeout=30
    )
    assert "unable to open message" in as_root.stdout, as_root.stdout + as_root.stderr
    # smtpd's uid cannot even connect (the socket is for group qmail) ...
    res = run_as("qmaild", LSPAWN_PROBE, sock)
    assert res.stderr.strip() == "denied"
    # ... and rspawn's, in group qmail, is hung up on after SO_PEERCRED
    res = run_as("qmailr", LSPAWN_PROBE, sock)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() in ("b''", "reset")


def test_forged_envelope_from_qmaild_is_refused(system_mta: RunningMta) -> None:
    env = {"QMAILHOME": str(system_mta.home), "PATH": os.environ.get("PATH", "")}
    pw = pwd.getpwnam("qmaild")
    # an envelope that does not start with the sender: qmail-queue's 91
    rfd, wfd = os.pipe()
    os.write(wfd, b"Tpostmaster@localhost\0\0")
    os.close(wfd)
    res = subprocess.run(
        [str(BIN / "qmail-queue")],
        input=b"Subject: forged\n\nx\n",
        stdout=rfd,
        user=pw.pw_uid,
        group=pw.pw_gid,
        extra_groups=[pw.pw_gid],
        env=env,
        capture_output=False,
        timeout=30,
        check=False,
        cwd="/",
    )
    os.close(rfd)
    assert res.returncode == 91
    assert not any((system_mta.home / "queue" / "todo").iterdir())


def test_qmaild_cannot_claim_a_bounce(system_mta: RunningMta) -> None:
    """Only send may say "invoked for bounce"; smtpd's uid is recorded instead."""
    code = (
        "import sys\n"
        "from pyqmail.ipc.queue_proto import submit_sync\n"
        "r = submit_sync(sys.argv[1], b'bounce', b'Subject: claim\\n\\nx\\n',\n"
        "                b'F\\0Tpostmaster@localhost\\0\\0')\n"
        "print(r.status)\n"
    )
    before = len(system_mta.maildir_files("postmaster"))
    res = run_as("qmaild", code, str(system_mta.home / "queue" / "lock" / "queue.sock"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "K"
    files = system_mta.wait_for_maildir("postmaster", before + 1)
    claimed = [f for f in files if b"Subject: claim" in f.read_bytes()]
    assert claimed, "the message never arrived"
    text = claimed[0].read_bytes()
    assert f"invoked by uid {pwd.getpwnam('qmaild').pw_uid}".encode() in text
    assert b"invoked for bounce" not in text


def test_smtpd_checks_recipients_and_passwords_through_root_lookup(
    system_mta: RunningMta,
) -> None:
    """qmaild may read neither users/ nor homes: the lookup service (root) answers it."""
    assert uids_of(system_mta.component_pid("lookup"))[0] == 0
    with smtplib.SMTP("127.0.0.1", system_mta.smtp_port, timeout=30) as s:
        s.ehlo("client.example")
        s.mail("a@example.com")
        assert s.rcpt("nobody-here@localhost")[0] == 550
        assert s.rcpt("postmaster@localhost")[0] == 250
    res = subprocess.run(
        [str(BIN / "pyqmail"), "passwd", "postmaster", "--home", str(system_mta.home)],
        input="pw for postmaster\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    with smtplib.SMTP("127.0.0.1", system_mta.submission_port, timeout=30) as s:
        s.ehlo("client.example")
        assert s.login("postmaster", "pw for postmaster")[0] == 235
