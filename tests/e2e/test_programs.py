"""|program lines end to end through SMTP: qmail's environment and exit codes.

qmail-files §5.4 (exit codes), §5.5 (program environment).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

from tests.e2e.deliveries import send, wait_result
from tests.harness import init_home, pyqmail, running_mta, wait_until, write_control

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


def test_a_body_a_program_left_open_is_never_reused(tmp_path: Path) -> None:
    """A program's child that keeps the message as its stdin keeps that
    message: clean unlinks the body instead of handing it to the writer for
    reuse (queue/spare.py), while later messages' files are reused."""
    home, bob = _setup(tmp_path)
    (bob / ".qmail-hold").write_text(
        "|exec 3<&0; sleep 120 <&3 >/dev/null 2>&1 & echo $! > holder.pid\n"
    )
    (bob / ".qmail-plain").write_text("./Maildir/\n")
    holder = 0
    try:
        with running_mta(home) as mta:
            send(mta, "s@example.org", [f"bob-hold@{DOMAIN}"], BODY)
            assert wait_result(mta, f"bob-hold@{DOMAIN}")[0] == "success"
            holder = int((bob / "holder.pid").read_text())
            wait_until(mta.queue_empty, 20, "the held message to leave the queue")
            assert os.readlink(f"/proc/{holder}/fd/0").endswith(" (deleted)")
            assert not [n for n in os.listdir(home / "queue" / "spare") if n.startswith("m")]
            for n in range(8):
                send(
                    mta,
                    "s@example.org",
                    [f"bob-plain@{DOMAIN}"],
                    b"Subject: %d\r\n\r\nnext\r\n" % n,
                )
                mta.wait_for_maildir("bob", n + 1)
                time.sleep(0.3)  # the writer looks into spare/ at most every 0.2 s
            with open(f"/proc/{holder}/fd/0", "rb") as held:
                assert held.read().endswith(b"Subject: prog\n\nbody line\n")
        reused = re.findall(r"queued in \d+ commit round\(s\), (\d+) file\(s\) reused", mta.log())
        assert reused
        assert int(reused[-1]) > 0
    finally:
        if holder:
            os.kill(holder, signal.SIGKILL)
