"""users/cdb, users/assign and passwd lookups with real files (qmail-files §4).

qmail-newu compiles users/assign into users/cdb; lspawn reads the cdb (edits
to users/assign are live only after qmail-newu); qmail-getpw's passwd rules.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest

from pyqmail.cli.homeinit import init_home
from pyqmail.cli.newu import compile_users
from pyqmail.config import Home
from pyqmail.formats.assign import UserMatch
from pyqmail.formats.userscdb import UsersCdbError
from pyqmail.local.deliver import EXIT_OK, LocalJob, deliver
from pyqmail.local.users import AssignCache, alias_user, getpw, resolve
from pyqmail.unix import accounts
from tests.harness import BIN, environ_with_home


@pytest.fixture
def home(tmp_path: Path) -> Home:
    h = Home(str(tmp_path / "qmail"))
    init_home(h, "localhost")
    return h


def _assign(home: Home, *lines: str) -> None:
    Path(home.assign).write_text("".join(ln + "\n" for ln in lines) + ".\n")


def test_lspawn_reads_users_cdb_and_assign_edits_wait_for_qmail_newu(home: Home) -> None:
    cache = AssignCache(home)
    db = cache.get()
    assert db is not None
    assert db.lookup("postmaster") is not None
    _assign(home, "=joe:joe:1001:100:/home/joe:::")
    db = cache.get()
    assert db is not None
    assert db.lookup("joe") is None  # users/cdb is unchanged until qmail-newu runs
    same = cache.get()
    assert same is not None
    assert same.lookup("JOE") is None  # remembered so: the next load must forget it
    res = subprocess.run(
        [str(BIN / "qmail-newu")], env=environ_with_home(Path(home.root)), check=False
    )
    assert res.returncode == 0
    db = cache.get()
    assert db is not None
    assert db.lookup("JOE") == UserMatch("joe", 1001, 100, "/home/joe", "", "")
    assert db.lookup("postmaster") is None


def test_without_users_cdb_users_assign_is_read(home: Home) -> None:
    os.unlink(home.users_cdb)
    _assign(home, "+joe-:joe:1:1:/j:-::")
    db = AssignCache(home).get()
    assert db is not None
    assert db.lookup("joe-x") == UserMatch("joe", 1, 1, "/j", "-", "x")


def test_qmail_newu_refuses_a_bad_file_and_keeps_the_old_cdb(home: Home) -> None:
    before = Path(home.users_cdb).read_bytes()
    Path(home.assign).write_text("=joe:joe:x:1:/j:::\n.\n")
    res = subprocess.run(
        [str(BIN / "qmail-newu")],
        env=environ_with_home(Path(home.root)),
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 111
    assert "users/assign:1: uid and gid must be numbers" in res.stderr
    assert Path(home.users_cdb).read_bytes() == before


def test_corrupt_users_cdb_is_our_error(home: Home) -> None:
    Path(home.users_cdb).write_bytes(b"\xff" * 100)
    with pytest.raises(UsersCdbError):
        AssignCache(home).get()


def test_alias_user_takes_what_nobody_claims(home: Home) -> None:
    compile_users(home)
    match = resolve("Nobody-Here", home, AssignCache(home).get())
    assert match is not None
    assert (match.user, match.home, match.dash, match.ext) == (
        "alias",
        os.path.join(home.root, "alias"),
        "-",
        "Nobody-Here",
    )


def _pw(name: str, uid: int, home: str) -> pwd.struct_passwd:
    return pwd.struct_passwd((name, "x", uid, 100, "", home, "/bin/sh"))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_getpw_rules(tmp_path: Path) -> None:
    """qmail-getpw: longest name first, prefixes end before '-', uid 0 never,
    home must exist and belong to the user; lowercase lookup."""
    homes = {n: tmp_path / n for n in ("joe", "joe-sub", "stolen")}
    for n, p in homes.items():
        p.mkdir()
        os.chown(p, 0 if n == "stolen" else 4242, 0)
    table = {
        "joe": _pw("joe", 4242, str(homes["joe"])),
        "joe-sub": _pw("joe-sub", 4242, str(homes["joe-sub"])),
        "root": _pw("root", 0, str(tmp_path)),
        "stolen": _pw("stolen", 4242, str(homes["stolen"])),
        "gone": _pw("gone", 4242, str(tmp_path / "missing")),
    }

    def getpwnam(name: str) -> pwd.struct_passwd:
        return table[name]

    assert getpw("joe", getpwnam=getpwnam) == UserMatch("joe", 4242, 100, str(homes["joe"]), "", "")
    assert getpw("JOE-Sub-X", getpwnam=getpwnam) == UserMatch(
        "joe-sub", 4242, 100, str(homes["joe-sub"]), "-", "X"
    )
    assert getpw("joe-other-y", getpwnam=getpwnam) == UserMatch(
        "joe", 4242, 100, str(homes["joe"]), "-", "other-y"
    )
    assert getpw("root", getpwnam=getpwnam) is None
    assert getpw("stolen-x", getpwnam=getpwnam) is None
    assert getpw("gone", getpwnam=getpwnam) is None


def test_qmail_pw2u_reads_passwd_and_users_files(home: Home, tmp_path: Path) -> None:
    joe = tmp_path / "joe"  # -H: homes are not looked at
    uid, gid = 4242, 4343
    users = Path(home.root) / "users"
    (users / "mailnames").write_text("joe:joe:js\n")
    (users / "append").write_text("=extra:joe:1:1:/x:::\n")
    passwd = (
        f"alias:x:{uid}:{gid}::{home.root}/alias:/bin/true\n"
        f"root:x:0:0::/root:/bin/sh\n"
        f"joe:x:{uid}:{gid}::{joe}:/bin/sh\n"
    )
    res = subprocess.run(
        [str(BIN / "qmail-pw2u"), "-H"],
        input=passwd,
        env=environ_with_home(Path(home.root)),
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert f"=js:joe:{uid}:{gid}:{joe}:::" in out
    assert f"+:alias:{uid}:{gid}:{home.root}/alias:-::" in out
    assert not any(":root:" in line for line in out)
    assert out[-2:] == ["=extra:joe:1:1:/x:::", "."]
    bad = subprocess.run(
        [str(BIN / "qmail-pw2u"), "-x"], input="", capture_output=True, text=True, check=False
    )
    assert bad.returncode == 100


def test_pyqmail_check_warns_of_a_stale_users_cdb_and_refuses_bad_quotas(home: Home) -> None:
    from pyqmail.cli.localcheck import check_local
    from pyqmail.cli.main import check_home

    assert check_home(home) == []
    assert check_local(home) == []
    os.utime(Path(home.users_cdb), ns=(1, 1))
    Path(home.control("quotas")).write_text("joe:many\n")
    problems = check_home(home)
    assert [p for p in problems if p.startswith(f"{home.control('quotas')}:1: ")], problems
    assert any("run qmail-newu" in w for w in check_local(home))


# -- the alias user: one rule for qmail-getpw and lspawn -------------------------


def _qmail_getpw(home: Home, local: str) -> tuple[int, list[str]]:
    res = subprocess.run(
        [str(BIN / "qmail-getpw"), local],
        env=environ_with_home(Path(home.root)),
        capture_output=True,
        check=False,
    )
    return res.returncode, res.stdout.decode().split("\0")[:-1]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_embedded_home_alias_user_is_the_owner_of_its_alias_dir(home: Home) -> None:
    """Whether or not the machine has an `alias` account: an embedded home's
    deliveries run as its invoking user, so ~alias's owner is the alias user."""
    alias_dir = os.path.join(home.root, "alias")
    os.chown(alias_dir, 4321, 4322)
    code, fields = _qmail_getpw(home, "No-Such-Qq")
    assert code == 0
    assert fields == ["alias", "4321", "4322", alias_dir, "-", "No-Such-Qq"]
    assert resolve("No-Such-Qq", home, None) == UserMatch(
        "alias", 4321, 4322, alias_dir, "-", "No-Such-Qq"
    )


def test_embedded_home_without_alias_dir_has_no_alias_user(home: Home) -> None:
    shutil.rmtree(os.path.join(home.root, "alias"))
    code, fields = _qmail_getpw(home, "No-Such-Qq")
    assert (code, fields) == (116, [])
    assert resolve("No-Such-Qq", home, None) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_system_home_alias_user_is_the_alias_account(home: Home) -> None:
    """qmail's rule: the account's uid/gid, ~alias = QMAILHOME/alias (not the
    account's passwd home), and no account means no alias user."""
    os.chown(home.queue, 5001, 5001)  # what makes a system home: queue/ is qmailq's
    os.chown(os.path.join(home.root, "alias"), 6000, 6000)  # the owner does not decide
    table = {
        "qmailq": _pw("qmailq", 5001, "/nonexistent"),
        "alias": pwd.struct_passwd(("alias", "x", 5002, 5003, "", "/elsewhere", "/bin/false")),
    }

    def getpwnam(name: str) -> pwd.struct_passwd:
        return table[name]

    alias_dir = os.path.join(home.root, "alias")
    assert alias_user(home, "Rest-Of-It", getpwnam) == UserMatch(
        "alias", 5002, 5003, alias_dir, "-", "Rest-Of-It"
    )
    del table["alias"]
    assert alias_user(home, "Rest-Of-It", getpwnam) is None


@pytest.mark.skipif(
    os.geteuid() != 0 or accounts.qmail_ids() is None,
    reason="needs root and qmail's accounts (test_privsep creates them in CI)",
)
def test_system_home_qmail_getpw_and_lspawn_use_the_real_alias_account(home: Home) -> None:
    ids = accounts.qmail_ids()
    assert ids is not None
    os.chown(home.queue, ids["qmailq"].uid, ids["qmailq"].gid)
    alias_dir = os.path.join(home.root, "alias")
    code, fields = _qmail_getpw(home, "zz-nosuch-q")
    assert code == 0
    expected = ["alias", str(ids["alias"].uid), str(ids["alias"].gid), alias_dir, "-"]
    assert fields == [*expected, "zz-nosuch-q"]
    assert resolve("zz-nosuch-q", home, None) == UserMatch(
        "alias", ids["alias"].uid, ids["alias"].gid, alias_dir, "-", "zz-nosuch-q"
    )


def test_qmail_pw2u_slash_option_delivers_through_dot_qmail_dash_slash(
    home: Home, tmp_path: Path
) -> None:
    """qmail-pw2u -/ | qmail-newu, then a delivery to joe-lists reads
    ~joe/.qmail-/lists (a file in the directory .qmail-/)."""
    joe = tmp_path / "joe"
    maildir = joe / "ListMail"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True)
    (joe / ".qmail-").mkdir()
    (joe / ".qmail-" / "lists").write_text("./ListMail/\n")
    (joe / ".qmail-lists").write_text("|exit 100\n")  # what -/ must not read
    uid, gid = os.getuid() or 4242, os.getgid()  # pw2u skips uid 0
    passwd = f"alias:x:{uid}:{gid}::{home.root}/alias:/bin/true\njoe:x:{uid}:{gid}::{joe}:/sh\n"
    env = environ_with_home(Path(home.root))
    res = subprocess.run(
        [str(BIN / "qmail-pw2u"), "-/", "-H"],
        input=passwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert f"+joe-:joe:{uid}:{gid}:{joe}:-/::" in res.stdout.splitlines()
    Path(home.assign).write_text(res.stdout)
    newu = subprocess.run([str(BIN / "qmail-newu")], env=env, check=False)
    assert newu.returncode == 0
    user = resolve("joe-lists", home, AssignCache(home).get())
    assert user == UserMatch("joe", uid, gid, str(joe), "-/", "lists")
    message = tmp_path / "mess"
    message.write_bytes(b"Subject: list\n\nbody\n")
    job = LocalJob(str(message), b"a@example.org", b"joe-lists@example.net", "1.Q1R0", False)
    code, report = deliver(home, job, user, "./Maildir/")
    assert (code, report) == (EXIT_OK, "did 1+0+0\n")
    [delivered] = list((maildir / "new").iterdir())
    assert delivered.read_bytes().endswith(b"Subject: list\n\nbody\n")
