"""pyqmail check, qmail-showctl and qmail-getpw, run as an administrator runs them."""

from __future__ import annotations

import os
import pwd
import re
import subprocess
from pathlib import Path

import pytest

from pyqmail.controlfiles import CONTROL_FILES, check_text
from tests.harness import BIN, environ_with_home, pyqmail, write_control

README = Path(__file__).resolve().parents[2] / "README.md"


def run(home: Path, *argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        env=environ_with_home(home),
        capture_output=True,
        timeout=30,
        check=False,
    )


def test_check_passes_a_fresh_home(home: Path) -> None:
    res = pyqmail("check", "--home", str(home))
    assert res.returncode == 0, res.stdout
    assert res.stdout.strip().endswith(": ok")


def test_check_names_every_bad_file_and_line(home: Path) -> None:
    write_control(home, "databytes", "lots\n")
    write_control(home, "smtproutes", "# routes\nexample.net:relay.example:99999\nbroken\n")
    write_control(home, "rcpthosts", "localhost\n.example.org\nbad host\n")
    write_control(home, "virtualdomains", "example.com:alice\nnocolon\n")
    write_control(home, "resolvers", "127.0.0.1:53\nnot-an-ip\n")
    write_control(home, "bouncefrom", "mailer@daemon\n")
    write_control(home, "tcprules.smtp", "127.:allow\n10.:maybe\n")
    write_control(home, "idhost", "\n")
    (home / "users" / "assign").write_text("=joe:joe:1:1:/home/joe:::\nbad line\n.\n")
    write_control(home, "mystery", "?\n")
    res = pyqmail("check", "--home", str(home))
    assert res.returncode == 1
    c = f"{home}/control/"
    out = res.stdout
    for expected in (
        f"{c}databytes:1: 'lots' is not a decimal number",
        f"{c}smtproutes:2: '99999' is not a port number",
        f"{c}smtproutes:3: needs 'domain:relay[:port]'",
        f"{c}rcpthosts:3: 'bad host' is not a host name",
        f"{c}virtualdomains:2: needs 'domain:prepend'",
        f"{c}resolvers:2: 'not-an-ip' is not an IP address",
        f"{c}bouncefrom:1: 'mailer@daemon' is not a local part",
        f"{c}tcprules.smtp:2:",
        f"{c}idhost:1: empty",
        f"{home}/users/assign:2:",
        f"{c}mystery:0: unknown control file (ignored)",
    ):
        assert expected in out, (expected, out)
    # an unknown file is only a warning
    for name in ("databytes", "smtproutes", "rcpthosts", "virtualdomains", "resolvers"):
        (home / "control" / name).unlink()
    for name in ("bouncefrom", "tcprules.smtp", "idhost"):
        (home / "control" / name).unlink()
    (home / "users" / "assign").write_text(".\n")
    res = pyqmail("check", "--home", str(home))
    assert res.returncode == 0, res.stdout
    assert "mystery:0: unknown control file" in res.stdout


@pytest.mark.parametrize("cf", CONTROL_FILES, ids=lambda cf: cf.name)
def test_every_control_file_is_in_the_readme(cf: object) -> None:
    name = getattr(cf, "name", "")
    assert f"`{name}`" in README.read_text(), f"control/{name} missing from README's table"


@pytest.mark.parametrize(
    ("name", "text", "ok"),
    [
        ("me", "mx.example.com\n", True),
        ("me", "[192.0.2.1]\n", True),
        ("me", "two words\n", False),
        ("locals", "a.example\n\n# comment\nb.example\n", True),
        ("badmailfrom", "@spam.example\nx@y.example\n", True),
        ("badmailfrom", "x @y\n", False),
        ("smtproutes", ":[192.0.2.1]:2525\n.example.net:\nx.example:relay.example\n", True),
        ("smtproutes", "x.example:[192.0.2.1\n", False),
        ("resolvers", "[::1]:53\n192.0.2.1\n", True),
        ("concurrencyremote", "121\n", False),
        ("remotebatch", "0\n", False),
        ("doublebounceto", "postmaster\n", True),
        ("smtpgreeting", "mx.example.com ESMTP ready\n", True),
    ],
)
def test_validators(name: str, text: str, ok: bool) -> None:
    cf = next(c for c in CONTROL_FILES if c.name == name)
    assert (check_text(cf, text, name) == []) is ok


def test_showctl_explains_values_defaults_and_unknown_files(home: Path) -> None:
    write_control(home, "me", "mx.example.com\n")
    write_control(home, "databytes", "1000000\n")
    write_control(home, "locals", "localhost\nmx.example.com\n")
    write_control(home, "mystery", "?\n")
    res = run(home, "qmail-showctl")
    assert res.returncode == 0
    out = res.stdout.decode()
    assert out.startswith(f"qmail home directory: {home}.\nuser-ext delimiter: -.\n")
    assert "\nsubdirectory split: 23.\n" in out
    for para in (
        "\ndatabytes: SMTP DATA limit is 1000000 bytes.\n",
        "\nconcurrencyremote: (Default.) Remote concurrency is 20.\n",
        "\nbouncehost: (Default.) Bounce host name is mx.example.com.\n",
        "\ndefaultdomain: (Default.) Default domain name is mx.example.com.\n",
        "\nlocals: \nMessages for localhost are delivered locally.\n"
        "Messages for mx.example.com are delivered locally.\n",
        "\nme: My name is mx.example.com.\n",
        "\nvirtualdomains: (Default.) No virtual domains.\n",
        "\nmystery: I have no idea what this file does.\n",
    ):
        assert para in out, para
    # every known file has its paragraph, in the table's order
    names = re.findall(r"^([\w.]+): ", out, re.MULTILINE)
    known = [cf.name for cf in CONTROL_FILES]
    assert [n for n in names if n in known] == known


def _a_passwd_user() -> pwd.struct_passwd | None:
    """Any account qmail-getpw would accept: uid not 0, home it owns."""
    for pw in pwd.getpwall():
        if pw.pw_uid == 0 or not pw.pw_name.islower() or "-" in pw.pw_name:
            continue
        try:
            if os.stat(pw.pw_dir).st_uid == pw.pw_uid and len(pw.pw_name) < 32:
                return pw
        except OSError:
            continue
    return None


def test_getpw_follows_qmails_rules(home: Path) -> None:
    assert run(home, "qmail-getpw").returncode == 100
    pw = _a_passwd_user()
    if pw is None:
        pytest.skip("no account with its own home directory on this machine")
    fields = [pw.pw_name, str(pw.pw_uid), str(pw.pw_gid), pw.pw_dir]
    exact = run(home, "qmail-getpw", pw.pw_name.upper())
    assert exact.returncode == 0
    assert exact.stdout.split(b"\0") == [f.encode() for f in [*fields, "", "", ""]]
    ext = run(home, "qmail-getpw", f"{pw.pw_name}-Lists-Foo")
    assert ext.stdout.split(b"\0") == [f.encode() for f in [*fields, "-", "Lists-Foo", ""]]
    nobody = run(home, "qmail-getpw", "no-such-user-here")
    assert nobody.returncode == 0
    user, _uid, _gid, _home, dash, rest, end = nobody.stdout.split(b"\0")
    assert (user, dash, rest, end) == (b"alias", b"-", b"no-such-user-here", b"")
    # uid 0 never receives mail
    root = run(home, "qmail-getpw", "root")
    assert root.stdout.split(b"\0")[0] == b"alias"


def test_every_control_file_the_code_reads_is_in_the_table() -> None:
    """A new control file needs a row in pyqmail.controlfiles (check, showctl, README)."""
    src = Path(__file__).resolve().parents[2] / "src" / "pyqmail"
    pattern = re.compile(r'(?:read_control|_line_or_me)\(\s*[\w.]+,\s*"([\w.]+)"')
    read = {m for path in src.rglob("*.py") for m in pattern.findall(path.read_text())}
    assert read, "the pattern no longer finds the control readers"
    known = {cf.name for cf in CONTROL_FILES}
    assert sorted(read - known) == [], "add these to CONTROL_FILES and the README"
