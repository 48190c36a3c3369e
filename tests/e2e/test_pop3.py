"""POP3 end to end: mail sent over SMTP, read back with poplib and fetchmail.

The MTA runs with its built-in --pop3 listener (one forked process per
session); the qmail chain (qmail-popup, pyqmail-checkpassword, qmail-pop3d)
runs under a real tcpserver in test_pop3_chain.py.
"""

from __future__ import annotations

import contextlib
import getpass
import mailbox
import os
import poplib
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from tests.harness import (
    BIN,
    RunningMta,
    init_home,
    pyqmail,
    running_mta,
    wait_until,
    write_control,
)

PASSWORD = "correct horse"


def add_pop_user(home: Path, name: str, password: str = PASSWORD) -> None:
    assert pyqmail("adduser", name, "--home", str(home)).returncode == 0
    res = subprocess.run(
        [str(BIN / "pyqmail"), "passwd", name, "--home", str(home)],
        input=password.encode() + b"\n",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr


def write_servercert(home: Path, ca_file: Path | None = None) -> ssl.SSLContext:
    """control/servercert.pem (chain + key) from a fresh CA; a client context trusting it."""
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", common_name="localhost")
    pem = b"".join(b.bytes() for b in cert.cert_chain_pems) + cert.private_key_pem.bytes()
    (home / "control" / "servercert.pem").write_bytes(pem)
    if ca_file is not None:
        ca.cert_pem.write_to_path(str(ca_file))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@contextlib.contextmanager
def pop_mta(home: Path) -> Iterator[tuple[RunningMta, int]]:
    with running_mta(home, "--pop3", "127.0.0.1:0") as mta:
        found: list[int] = []

        def ready() -> bool:
            m = re.search(r"pop3 listening on 127\.0\.0\.1:(\d+)", mta.log())
            if m and "pop3d ready" in mta.log():
                found.append(int(m.group(1)))
                return True
            return False

        wait_until(ready, 20, "the pop3 listener")
        yield mta, found[0]


def send(mta: RunningMta, rcpt: str, subject: str, body: str) -> None:
    with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=30) as c:
        c.sendmail("sender@example.org", [rcpt], f"Subject: {subject}\r\n\r\n{body}".encode())


def pop_error(call: Callable[..., object], *args: object) -> bytes:
    """The -ERR line a poplib call raised (poplib keeps it as bytes: no match=)."""
    with pytest.raises(poplib.error_proto) as info:
        call(*args)
    return bytes(info.value.args[0])


def pop_command(p: poplib.POP3, line: str) -> bytes:
    """A one-line command poplib has no method for (LAST)."""
    shortcmd: Callable[[str], bytes] = getattr(p, "_shortcmd")  # noqa: B009 - untyped in typeshed
    return shortcmd(line)


def login(port: int, user: str = "alice", password: str = PASSWORD) -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", port, timeout=30)
    p.user(user)
    p.pass_(password)
    return p


@pytest.fixture
def alice_mta(tmp_path: Path) -> Iterator[tuple[RunningMta, int]]:
    home = tmp_path / "qmail"
    init_home(home)
    add_pop_user(home, "alice")
    with pop_mta(home) as (mta, port):
        send(mta, "alice@localhost", "one", "first\r\n")
        send(mta, "alice@localhost", "two", ".leading dot\r\n..two dots\r\nlast\r\n")
        send(mta, "alice@localhost", "three", "third\r\n" * 50)
        mta.wait_for_maildir("alice", 3)
        yield mta, port


def file_for_subject(mta: RunningMta, subject: str) -> Path:
    hits = [f for f in mta.maildir_files("alice") if f"Subject: {subject}\n" in f.read_text()]
    assert len(hits) == 1
    return hits[0]


def test_poplib_counts_sizes_retr_top_and_stable_uidl(alice_mta: tuple[RunningMta, int]) -> None:
    mta, port = alice_mta
    files = mta.maildir_files("alice")
    p = login(port)
    count, size = p.stat()
    assert (count, size) == (3, sum(f.stat().st_size for f in files))
    _, listing, _ = p.list()
    sizes = sorted(int(item.split()[1]) for item in listing)
    assert sizes == sorted(f.stat().st_size for f in files)
    uidls = dict(item.split() for item in p.uidl()[1])
    assert sorted(uidls.values()) == sorted(f.name.encode() for f in files)
    by_subject: dict[bytes, bytes] = {}
    for n in (b"1", b"2", b"3"):
        _, lines, _ = p.retr(int(n))
        text = b"\n".join(lines) + b"\n"
        subject = next(ln for ln in lines if ln.startswith(b"Subject: "))
        by_subject[subject] = n
        # poplib undoes the byte-stuffing: what we get back is the file, byte for byte
        assert text == file_for_subject(mta, subject[9:].decode()).read_bytes()
    assert pop_command(p, "LAST") == b"+OK 3"  # RFC 1725: the highest message retrieved
    n_two = int(by_subject[b"Subject: two"])
    _, top, _ = p.top(n_two, 1)
    assert top[-2:] == [b"", b".leading dot"]
    assert b"..two dots" not in top
    assert p.quit().startswith(b"+OK")
    # qmail-pop3d moves what was in new/ to cur/NAME:2, at QUIT ...
    md = mta.maildir("alice")
    assert not any((md / "new").iterdir())
    assert sorted(f.name for f in (md / "cur").iterdir()) == sorted(
        f"{u.decode()}:2," for u in uidls.values()
    )
    # ... and the UIDLs stay the same in the next session
    p = login(port)
    assert dict(item.split() for item in p.uidl()[1]) == uidls
    assert p.noop().startswith(b"+OK")
    p.quit()


def test_dele_only_on_quit_and_rset_restores(alice_mta: tuple[RunningMta, int]) -> None:
    mta, port = alice_mta
    p = login(port)
    uid1 = p.uidl(1).split()[2]
    p.dele(1)
    assert p.stat()[0] == 2
    assert b"no such message" in pop_error(p.retr, 1)
    p.retr(2)
    assert pop_command(p, "LAST") == b"+OK 2"
    p.rset()
    assert p.stat()[0] == 3
    assert pop_command(p, "LAST") == b"+OK 0"  # RSET forgets it too
    p.dele(1)
    # the client vanishes without QUIT: nothing is deleted
    p.close()
    wait_until(lambda: "pop3:" in mta.log(), 10, "the session log")
    p = login(port)
    assert p.stat()[0] == 3
    assert p.uidl(1).split()[2] == uid1
    p.dele(1)
    p.quit()
    assert len(mta.maildir_files("alice")) == 2
    assert all(not f.name.startswith(uid1.decode()) for f in mta.maildir_files("alice"))
    p = login(port)
    assert p.stat()[0] == 2
    assert uid1 not in [item.split()[1] for item in p.uidl()[1]]
    p.quit()


def test_wrong_password_gets_err_no_access_and_a_log_line(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    add_pop_user(home, "alice")
    with pop_mta(home) as (mta, port):
        send(mta, "alice@localhost", "secret", "not for you\r\n")
        mta.wait_for_maildir("alice", 1)
        for user, password in (("alice", "wrong"), ("nobody", PASSWORD)):
            p = poplib.POP3("127.0.0.1", port, timeout=30)
            p.user(user)
            assert b"authorization failed" in pop_error(p.pass_, password)
            # and the session is over: no mailbox command gets through
            with pytest.raises((poplib.error_proto, OSError, EOFError)):
                p.stat()
            p.close()
        wait_until(lambda: "login failed for 'nobody'" in mta.log(), 10, "the log line")
        assert "login failed for 'alice' from 127.0.0.1" in mta.log()
        assert len(mta.maildir_files("alice")) == 1
        assert any((mta.maildir("alice") / "new").iterdir())  # untouched


def test_stls_then_login_over_tls(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    add_pop_user(home, "alice")
    client_ctx = write_servercert(home)
    with pop_mta(home) as (mta, port):
        send(mta, "alice@localhost", "over tls", "hello\r\n")
        mta.wait_for_maildir("alice", 1)
        p = poplib.POP3("127.0.0.1", port, timeout=30)
        assert "STLS" in p.capa()
        p.stls(context=client_ctx)
        assert isinstance(p.sock, ssl.SSLSocket)
        assert "STLS" not in p.capa()
        p.user("alice")
        p.pass_(PASSWORD)
        _, lines, _ = p.retr(1)
        assert b"Subject: over tls" in lines
        p.dele(1)
        p.quit()
        assert mta.maildir_files("alice") == []


def test_idle_session_is_closed(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    write_control(home, "timeoutpop3d", "1\n")
    with pop_mta(home) as (_mta, port), socket.create_connection(("127.0.0.1", port), 30) as s:
        s.settimeout(30)
        assert s.recv(512).startswith(b"+OK <")
        s.sendall(b"NOOP\r\n")
        got = b""
        while True:  # the server hangs up on us long before our own 30 s
            chunk = s.recv(512)
            if not chunk:
                break
            got += chunk
        assert got == b"+OK \r\n"


FETCHMAIL_MDA = """
import mailbox, sys
box = mailbox.mbox(sys.argv[1])
box.lock()
box.add(mailbox.mboxMessage(sys.stdin.buffer.read()))
box.flush()
box.unlock()
"""


def test_fetchmail_downloads_everything_into_an_mbox(
    alice_mta: tuple[RunningMta, int], tmp_path: Path
) -> None:
    fetchmail = shutil.which("fetchmail")
    if fetchmail is None:
        pytest.skip("fetchmail not installed (make test installs it when root)")
    mta, port = alice_mta
    fm_home = tmp_path / "fetchmail"
    fm_home.mkdir(mode=0o700)
    mda = fm_home / "mda.py"
    mda.write_text(FETCHMAIL_MDA)
    mbox_path = fm_home / "mbox"
    rc = fm_home / "fetchmailrc"
    # fetchmail insists on STLS when it can: give it a certificate it can check
    ca_file = fm_home / "ca.pem"
    write_servercert(mta.home, ca_file)
    rc.write_text(
        f"set no syslog\n"
        f"poll localhost via 127.0.0.1 with proto POP3 port {port} timeout 30:\n"
        f'  user "alice" there with password "{PASSWORD}" is "{getpass.getuser()}" here\n'
        f'  options fetchall nokeep sslproto "tls1.2+" sslcertck sslcertfile "{ca_file}"\n'
        f'  sslcommonname "localhost"\n'
        f'  mda "{sys.executable} {mda} {mbox_path}"\n'
    )
    rc.chmod(0o600)
    env = {"PATH": os.environ["PATH"], "HOME": str(fm_home), "FETCHMAILHOME": str(fm_home)}
    res = subprocess.run(
        [fetchmail, "-f", str(rc), "--nodetach", "-v"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    box = mailbox.mbox(str(mbox_path))
    try:
        messages = list(box)
    finally:
        box.close()
    subjects = sorted(str(m["Subject"]) for m in messages)
    assert subjects == ["one", "three", "two"]
    two = next(m for m in messages if m["Subject"] == "two")
    payload = two.get_payload(decode=False)
    assert isinstance(payload, str)
    assert payload.replace("\r\n", "\n") == ".leading dot\n..two dots\nlast\n"
    # nokeep: fetchmail deleted them, and the deletions happened at its QUIT
    assert mta.maildir_files("alice") == []


def test_a_broken_servercert_stops_start_and_fails_check(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    (home / "control" / "servercert.pem").write_text("not a certificate\n")
    check = pyqmail("check", "--home", str(home))
    assert check.returncode == 1
    assert "servercert.pem:0: unusable" in check.stdout
    start = subprocess.run(
        [
            str(BIN / "pyqmail"),
            "start",
            "--home",
            str(home),
            *("--smtp", "off", "--pop3", ":0", "--qmtp", "off", "--qmqp", "off"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert start.returncode != 0
    assert "servercert.pem:0: unusable" in start.stderr
