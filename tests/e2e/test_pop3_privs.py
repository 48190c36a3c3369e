"""As root, a POP3 session runs as the mailbox owner, never as root."""

from __future__ import annotations

import os
import poplib
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.e2e.test_pop3 import PASSWORD, add_pop_user, pop_error, pop_mta, send
from tests.e2e.test_privsep import reachable_code, uids_of  # noqa: F401 - a fixture
from tests.harness import init_home, wait_until

NOBODY = 65534


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change uid")
def test_session_drops_to_the_mailbox_owner() -> None:
    # pytest's tmp_path is inside a root-only 0700 directory nobody else
    # could enter; this home must be reachable by its users
    top = Path(tempfile.mkdtemp(prefix="pyqmail-privs-"))
    try:
        top.chmod(0o755)
        run_as_nobody(top / "qmail")
    finally:
        shutil.rmtree(top)


def run_as_nobody(home: Path) -> None:
    init_home(home)
    os.chown(home, NOBODY, NOBODY)  # adduser gives new users the home's owner
    add_pop_user(home, "bob")
    os.chown(home, 0, 0)
    for dirpath, _dirs, names in os.walk(home / "mailboxes" / "bob"):
        os.chown(dirpath, NOBODY, NOBODY)
        for n in names:
            os.chown(os.path.join(dirpath, n), NOBODY, NOBODY)
    with pop_mta(home) as (mta, port):
        send(mta, "bob@localhost", "for bob", "hi\r\n")
        mta.wait_for_maildir("bob", 1)
        # a file only root could read: the session must fail to open it
        secret = mta.maildir("bob") / "new" / "1.root-only.host"
        secret.write_bytes(b"Subject: root only\n\nx\n")
        secret.chmod(0o600)
        os.utime(secret, (1, 1))  # oldest: message 1
        p = poplib.POP3("127.0.0.1", port, timeout=30)
        p.user("bob")
        p.pass_(PASSWORD)
        assert p.stat()[0] == 2
        assert b"unable to open" in pop_error(p.retr, 1)
        assert b"Subject: for bob" in p.retr(2)[1]
        p.dele(2)
        p.quit()
        wait_until(lambda: f"bob logged in from 127.0.0.1 (uid {NOBODY}," in mta.log(), 10, "log")
        assert [f.name for f in mta.maildir_files("bob")] == ["1.root-only.host:2,"]
        # root itself never gets a session through the system account path
        p = poplib.POP3("127.0.0.1", port, timeout=30)
        p.user("root")
        assert b"authorization failed" in pop_error(p.pass_, "anything")
        p.close()


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None,
    reason="a system home needs root and useradd (CI runs as root)",
)
@pytest.mark.usefixtures("reachable_code")
def test_system_home_sessions_run_as_alias() -> None:
    # pyqmail init --system: virtual mailboxes belong to alias; the listener
    # keeps root only to check passwords and hand each session its uid
    top = Path(tempfile.mkdtemp(prefix="pyqmail-pop3sys-"))
    try:
        top.chmod(0o755)
        home = top / "qmail"
        init_home(home, "--system")
        add_pop_user(home, "carol")
        alias_uid = pwd.getpwnam("alias").pw_uid
        with pop_mta(home) as (mta, port):
            assert uids_of(mta.component_pid("pop3d"))[0] == 0
            send(mta, "carol@localhost", "system", "hi\r\n")
            mta.wait_for_maildir("carol", 1)
            p = poplib.POP3("127.0.0.1", port, timeout=30)
            # before any password: the half that reads the client is qmaild,
            # only its guard (which checks the password) is still root
            front = children(mta.component_pid("pop3d"))
            assert len(front) == 1
            assert uids_of(front[0]) == [pwd.getpwnam("qmaild").pw_uid] * 4
            guard = children(front[0])
            assert len(guard) == 1
            assert uids_of(guard[0])[0] == 0
            p.user("carol")
            p.pass_(PASSWORD)
            assert uids_of(guard[0]) == [alias_uid] * 4  # and now the mailbox owner
            assert b"Subject: system" in p.retr(1)[1]
            p.dele(1)
            p.quit()
            want = f"carol logged in from 127.0.0.1 (uid {alias_uid},"
            wait_until(lambda: want in mta.log(), 10, "the login line")
            assert mta.maildir_files("carol") == []
    finally:
        shutil.rmtree(top, ignore_errors=True)
