"""pyqmail-checkpassword speaks DJB's checkpassword interface; pyqmail passwd feeds it."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from pyqmail.auth import accounts, pwfile
from tests.harness import BIN, init_home, pyqmail


def checkpassword(home: Path, fd3: bytes, *prog: str) -> subprocess.CompletedProcess[bytes]:
    """Run it with fd 3 reading fd3 (sh moves stdin there), as qmail-popup would."""
    env = {"PATH": os.environ["PATH"], "QMAILHOME": str(home)}
    return subprocess.run(
        ["sh", "-c", 'exec "$0" "$@" 3<&0 </dev/null', str(BIN / "pyqmail-checkpassword"), *prog],
        input=fd3,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "qmail"
    init_home(h)
    assert pyqmail("adduser", "alice", "--home", str(h)).returncode == 0
    res = subprocess.run(
        [str(BIN / "pyqmail"), "passwd", "alice", "--home", str(h)],
        input=b"open sesame\n",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return h


SHOW = ("sh", "-c", 'echo "$USER|$HOME|$SHELL|$(pwd)|$(id -u)"')


def test_good_password_sets_env_chdirs_and_execs(home: Path) -> None:
    res = checkpassword(home, b"alice\0open sesame\0<1.2@host>\0", *SHOW)
    assert res.returncode == 0, res.stderr
    uhome = str(home / "mailboxes" / "alice")
    owner = (home / "mailboxes" / "alice").stat().st_uid
    assert res.stdout.decode().strip() == f"alice|{uhome}|/bin/sh|{uhome}|{owner}"


def test_timestamp_may_be_missing_but_password_must_be_terminated(home: Path) -> None:
    assert checkpassword(home, b"alice\0open sesame\0", *SHOW).returncode == 0
    assert checkpassword(home, b"alice\0open sesame", *SHOW).returncode == 2
    assert checkpassword(home, b"", *SHOW).returncode == 2


@pytest.mark.parametrize(
    "fd3",
    [
        b"alice\0open sesam\0<1.2@host>\0",
        b"alice\0\0<1.2@host>\0",
        b"bob\0open sesame\0<1.2@host>\0",
        b"root\0open sesame\0<1.2@host>\0",
        b"alice\0" + b"x" * 600 + b"\0\0",  # 512 bytes or more: refused unread
    ],
)
def test_bad_logins_exit_1_and_run_nothing(home: Path, fd3: bytes) -> None:
    res = checkpassword(home, fd3, *SHOW)
    assert res.returncode == 1
    assert res.stdout == b""


def test_no_program_is_misuse(home: Path) -> None:
    assert checkpassword(home, b"alice\0open sesame\0\0").returncode == 2


def test_broken_password_file_is_temporary(home: Path) -> None:
    pw = home / "users" / "password"
    pw.write_text(pw.read_text() + "bob:garbage\n")
    res = checkpassword(home, b"alice\0open sesame\0\0", *SHOW)
    assert res.returncode == 111
    assert b"password:2:" in res.stderr
    check = pyqmail("check", "--home", str(home))
    assert check.returncode == 1
    assert "users/password:2:" in check.stdout


def test_passwd_refuses_unknown_users(home: Path) -> None:
    res = subprocess.run(
        [str(BIN / "pyqmail"), "passwd", "nobody-here", "--home", str(home)],
        input=b"pw\n",
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 100
    assert b"adduser" in res.stderr


def test_libcrypt_matches_openssl_sha512_crypt() -> None:
    # the /etc/shadow path (root only) rests on this call
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    stored = subprocess.run(
        [openssl, "passwd", "-6", "-salt", "pyqmailsalt", "hunter2"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    assert accounts.crypt(b"hunter2", stored) == stored
    assert accounts.crypt(b"hunter3", stored) != stored


def test_root_never_logs_in_as_a_system_account(tmp_path: Path) -> None:
    assert accounts.authenticate(str(tmp_path), "root", b"anything") is None


SYSTEM_USER = "pyqpop3u"


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("chpasswd") is None,
    reason="a system account needs root, useradd and chpasswd (CI runs as root)",
)
def test_system_account_logs_in_with_its_shadow_password(home: Path) -> None:
    # not under tmp_path: pytest's directory is root-only, the user must enter its home
    top = Path(tempfile.mkdtemp(prefix="pyqmail-sysuser-"))
    top.chmod(0o755)
    uhome = top / "home"
    subprocess.run(["userdel", SYSTEM_USER], capture_output=True, check=False)
    subprocess.run(["useradd", "-m", "-d", str(uhome), SYSTEM_USER], check=True)
    try:
        # chpasswd hashes with the system's default method (yescrypt on Debian)
        subprocess.run(["chpasswd"], input=f"{SYSTEM_USER}:s3cret pw\n".encode(), check=True)
        pw = pwd.getpwnam(SYSTEM_USER)
        res = checkpassword(home, f"{SYSTEM_USER}\0s3cret pw\0<1.2@h>\0".encode(), *SHOW)
        assert res.returncode == 0, res.stderr
        want = f"{SYSTEM_USER}|{uhome}|{pw.pw_shell}|{uhome}|{pw.pw_uid}"
        assert res.stdout.decode().strip() == want
        bad = checkpassword(home, f"{SYSTEM_USER}\0s3cret\0<1.2@h>\0".encode(), *SHOW)
        assert bad.returncode == 1
        subprocess.run(["usermod", "-L", SYSTEM_USER], check=True)  # a locked account
        locked = checkpassword(home, f"{SYSTEM_USER}\0s3cret pw\0<1.2@h>\0".encode(), *SHOW)
        assert locked.returncode == 1
    finally:
        subprocess.run(["userdel", "-r", SYSTEM_USER], capture_output=True, check=False)
        shutil.rmtree(top, ignore_errors=True)


def test_a_password_without_a_user_is_temporary_trouble(home: Path) -> None:
    # users/password and users/cdb disagree: an operator's mistake, not a bad login
    pwfile.set_password(str(home), "ghost", "boo")
    res = checkpassword(home, b"ghost\0boo\0\0", *SHOW)
    assert res.returncode == 111
    assert b"no =ghost line" in res.stderr
    assert checkpassword(home, b"ghost\0wrong\0\0", *SHOW).returncode == 1
