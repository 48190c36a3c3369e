"""|program lines end to end through SMTP: qmail's environment and exit codes.

qmail-files §5.4 (exit codes), §5.5 (program environment).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.e2e.deliveries import send, wait_result
from tests.harness import init_home, pyqmail, running_mta, write_control

BODY = b"Subject: prog\r\n\r\nbody line\r\n"
DOMAIN = "mx.example.co.uk"
ENVDUMP = """\
import json, os, sys
data = sys.stdin.buffer.read().decode()
json.dump({"env": dict(os.environ), "stdin": data, "cwd": os.getcwd()}, open("env.json", "w"))
"""


def _setup(tmp_path: Path) -> tuple[Path, Path]:
    home = tmp_path / "qmail"
    init_home(home)
    write_control(home, "locals", f"localhost\n{DOMAIN}\n")
    write_control(home, "rcpthosts", f"localhost\n{DOMAIN}\n")
    assert pyqmail("adduser", "bob", "--home", str(home)).returncode == 0
    bob = home / "mailboxes" / "bob"
    (bob / "envdump.py").write_text(ENVDUMP)
    (bob / ".qmail-env-default").write_text(f"|{sys.executable} envdump.py\n")
    # the program's exit code is the extension: bob-exit-N
    (bob / ".qmail-exit-default").write_text('|exit "$DEFAULT"\n./Maildir/\n')
    return home, bob


def test_program_environment(tmp_path: Path) -> None:
    home, bob = _setup(tmp_path)
    rcpt = f"bob-env-A.b-c@{DOMAIN}"
    with running_mta(home) as mta:
        send(mta, "s@example.org", [rcpt], BODY)
        assert wait_result(mta, rcpt)[0] == "success"
    dump = json.loads((bob / "env.json").read_text())
    env = dump["env"]
    expected = {
        "SENDER": "s@example.org",
        "NEWSENDER": "s@example.org",
        "RECIPIENT": rcpt,
        "USER": "bob",
        "HOME": str(bob),
        "HOST": DOMAIN,
        "HOST2": "mx.example.co",
        "HOST3": "mx.example",
        "HOST4": "mx",
        "LOCAL": "bob-env-A.b-c",
        "EXT": "env-A.b-c",
        "EXT2": "A.b-c",
        "EXT3": "c",
        "EXT4": "",
        "DEFAULT": "A.b-c",
        "DTLINE": f"Delivered-To: {rcpt}\n",
        "RPLINE": "Return-Path: <s@example.org>\n",
        "QMAILHOME": str(home),
    }
    assert {k: env.get(k) for k in expected} == expected
    assert env["UFLINE"].startswith("From s@example.org ")
    assert env["UFLINE"].endswith("\n")
    assert dump["cwd"] == str(bob)
    # stdin: the message itself, without the Return-Path/Delivered-To lines
    assert not dump["stdin"].startswith(("Return-Path", "Delivered-To"))
    assert dump["stdin"].endswith("Subject: prog\n\nbody line\n")


def test_program_exit_codes(tmp_path: Path) -> None:
    """0 goes on, 99 stops later lines (success), 100/64 bounce, 111 and others defer."""
    home, bob = _setup(tmp_path)
    pm = "postmaster@localhost"
    final = [f"bob-exit-{c}@localhost" for c in (0, 99, 100, 64)]
    temporary = [f"bob-exit-{c}@localhost" for c in (111, 3)]
    with running_mta(home) as mta:
        send(mta, pm, final, BODY)
        send(mta, pm, temporary, BODY)
        outcome = {r: wait_result(mta, r)[0] for r in final + temporary}
        bounce = mta.wait_for_maildir("postmaster")[0].read_bytes()
    assert outcome == {
        "bob-exit-0@localhost": "success",
        "bob-exit-99@localhost": "success",
        "bob-exit-100@localhost": "failure",
        "bob-exit-64@localhost": "failure",
        "bob-exit-111@localhost": "deferral",
        "bob-exit-3@localhost": "deferral",
    }
    # exit 0 went on to the Maildir line; 99 stopped before it
    (only,) = list((bob / "Maildir" / "new").iterdir())
    assert b"Delivered-To: bob-exit-0@localhost\n" in only.read_bytes()
    assert b"<bob-exit-100@localhost>" in bounce
    assert b"<bob-exit-64@localhost>" in bounce
    assert b"bob-exit-0@" not in bounce
