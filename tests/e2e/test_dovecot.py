"""Maildir delivery read back by a real IMAP server: Dovecot over the delivered Maildir.

Dovecot runs in the foreground (``dovecot -F -c CONF``) with a private
config: loopback, a free port, runtime and state under a temporary
directory, one static user whose mail is the delivered Maildir. It is
killed by its PID at the end. Messages count and bytes must match, and a
Maildir++ folder delivered by a ``./Maildir/.Work/`` line must be visible.
"""

from __future__ import annotations

import imaplib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.deliveries import send
from tests.harness import init_home, running_mta, wait_until

NOBODY = 65534
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
CONF = """\
base_dir = {run}
state_dir = {state}
log_path = {run}/dovecot.log
listen = 127.0.0.1
protocols = imap
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 0
mail_location = maildir:{maildir}
passdb {{
  driver = static
  args = password=secret
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={home}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _imap_up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(100).startswith(b"* OK")
    except OSError:
        return False


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A 0755 temporary directory: Dovecot's login and mail processes run
    unprivileged and cannot enter the 0700 pytest tree."""
    top = Path(tempfile.mkdtemp(prefix="pyqmail-dovecot-"))
    top.chmod(0o755)
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def start_dovecot(maildir: Path, top: Path) -> tuple[subprocess.Popen[bytes], int]:
    run, state = top / "run", top / "state"
    run.mkdir()
    state.mkdir()
    port = _free_port()
    st = maildir.stat()
    conf = top / "dovecot.conf"
    conf.write_text(
        CONF.format(
            run=run,
            state=state,
            maildir=maildir,
            uid=st.st_uid,
            gid=st.st_gid,
            home=maildir.parent,
            port=port,
        )
    )
    with open(top / "stderr", "wb") as err:
        proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(conf)], stdin=subprocess.DEVNULL, stderr=err
        )
    return proc, port


@pytest.mark.skipif(not os.path.exists(DOVECOT), reason="dovecot-imapd not installed")
def test_dovecot_reads_the_delivered_maildir(open_tmp: Path) -> None:
    home = open_tmp / "qmail"
    init_home(home)
    pm = home / "mailboxes" / "postmaster"
    (pm / ".qmail-work").write_text("./Maildir/.Work/\n")
    bodies = [b"Subject: imap %d\r\n\r\n%s\r\n" % (n, b"x" * (n * 1000)) for n in range(3)]
    with running_mta(home) as mta:
        for body in bodies:
            send(mta, "s@example.org", ["postmaster@localhost"], body)
        send(mta, "s@example.org", ["postmaster-work@localhost"], b"Subject: folder\r\n\r\nw\r\n")
        files = mta.wait_for_maildir("postmaster", 3)
        work = pm / "Maildir" / ".Work"
        wait_until(lambda: any((work / "new").glob("*")), 30, "the .Work delivery")
        wait_until(mta.queue_empty, 30, "the queue to empty")
    if os.geteuid() == 0:
        # Dovecot never serves mail as uid 0: hand the mailbox to an ordinary uid
        home.chmod(0o755)
        for path in [pm, *pm.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
    proc, port = start_dovecot(pm / "Maildir", open_tmp)
    try:
        wait_until(lambda: proc.poll() is not None or _imap_up(port), 30, "dovecot to listen")
        assert proc.poll() is None, (open_tmp / "run" / "dovecot.log").read_text(errors="replace")
        imap = imaplib.IMAP4("127.0.0.1", port, timeout=30)
        try:
            imap.login("postmaster", "secret")
            typ, folders = imap.list()
            assert typ == "OK"
            names = [f.decode() for f in folders if isinstance(f, bytes)]
            # Maildir++: the .Work directory is the folder "Work" ("." separator)
            assert '(\\HasNoChildren) "." Work' in names
            typ, count = imap.select("INBOX", readonly=True)
            assert typ == "OK"
            assert int(count[0] or b"0") == 3
            on_disk = sorted(f.read_bytes().replace(b"\n", b"\r\n") for f in files)
            fetched = []
            for n in (1, 2, 3):
                typ, data = imap.fetch(str(n), "(RFC822.SIZE BODY.PEEK[])")
                assert typ == "OK"
                item = data[0]
                assert isinstance(item, tuple)
                head, raw = item
                size = int(head.split(b"RFC822.SIZE ")[1].split()[0].rstrip(b")"))
                assert size == len(raw)
                fetched.append(raw)
            assert sorted(fetched) == on_disk
            typ, count = imap.select("Work", readonly=True)
            assert typ == "OK"
            assert int(count[0] or b"0") == 1
            imap.logout()
        finally:
            if imap.state != "LOGOUT":
                imap.shutdown()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # shown by pytest only when the test failed
        print((open_tmp / "stderr").read_text(errors="replace"))
        print((open_tmp / "run" / "dovecot.log").read_text(errors="replace"))
