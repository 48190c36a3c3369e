"""The .qmail helper programs as qmail-local runs them: fd 0 a seekable message
file, qmail's environment; names, options and exit codes (qmail-programs §5, §6)."""

from __future__ import annotations

import mailbox
import os
import subprocess
from pathlib import Path

import pytest

from tests.harness import BIN

MESSAGE = b"Subject: hi\n\nFrom the top\nbody\n"
ENV = {
    "UFLINE": "From s@example.org Thu Jan 01 00:00:00 1970\n",
    "RPLINE": "Return-Path: <s@example.org>\n",
    "DTLINE": "Delivered-To: joe@example.net\n",
    "SENDER": "s@example.org",
    "NEWSENDER": "s@example.org",
}


def run(
    tmp_path: Path, *argv: str, env: dict[str, str] | None = None, skip: int = 0
) -> subprocess.CompletedProcess[bytes]:
    """Run a helper with the message on fd 0, already read up to skip bytes."""
    msg = tmp_path / "message"
    msg.write_bytes(MESSAGE)
    full = {"PATH": os.environ["PATH"], "QMAILHOME": str(tmp_path / "nohome"), **ENV}
    if env is not None:
        full = {**full, **env}
    with open(msg, "rb") as fh:
        fh.seek(skip)
        return subprocess.run(
            [str(BIN / argv[0]), *argv[1:]],
            stdin=fh,
            env={k: v for k, v in full.items() if v != "-"},
            capture_output=True,
            timeout=60,
            check=False,
        )


def test_preline_puts_the_three_lines_first(tmp_path: Path) -> None:
    res = run(tmp_path, "preline", "cat")
    assert res.returncode == 0
    assert res.stdout == (ENV["UFLINE"] + ENV["RPLINE"] + ENV["DTLINE"]).encode() + MESSAGE


@pytest.mark.parametrize(
    ("flags", "lines"),
    [("-f", ("RPLINE", "DTLINE")), ("-rd", ("UFLINE",)), ("-frdF", ("UFLINE",))],
)
def test_preline_flags(tmp_path: Path, flags: str, lines: tuple[str, ...]) -> None:
    res = run(tmp_path, "preline", flags, "cat")
    assert res.stdout == "".join(ENV[n] for n in lines).encode() + MESSAGE


def test_preline_exit_codes(tmp_path: Path) -> None:
    assert run(tmp_path, "preline", "sh", "-c", "cat >/dev/null; exit 37").returncode == 37
    assert run(tmp_path, "preline").returncode == 100  # usage
    assert run(tmp_path, "preline", "/no/such/program").returncode == 100
    assert run(tmp_path, "preline", "cat", env={"DTLINE": "-"}).returncode == 100
    assert run(tmp_path, "preline", "sh", "-c", "kill -9 $$").returncode == 111


@pytest.mark.parametrize(("child", "code"), [("true", 100), ("false", 0), ("exit 111", 111)])
def test_bouncesaying(tmp_path: Path, child: str, code: int) -> None:
    res = run(tmp_path, "bouncesaying", "Go away.", "sh", "-c", child)
    assert res.returncode == code
    assert (b"Go away." in res.stderr) == (code == 100)


def test_bouncesaying_without_program_always_bounces(tmp_path: Path) -> None:
    res = run(tmp_path, "bouncesaying", "No such list.")
    assert (res.returncode, res.stderr) == (100, b"No such list.\n")
    assert run(tmp_path, "bouncesaying").returncode == 100


@pytest.mark.parametrize(
    ("child", "code"), [("true", 100), ("false", 0), ("exit 111", 111), ("exit 100", 0)]
)
def test_except_inverts(tmp_path: Path, child: str, code: int) -> None:
    assert run(tmp_path, "except", "sh", "-c", child).returncode == code


def test_condredirect_without_redirect_and_errors(tmp_path: Path) -> None:
    """The program sees the message from the start; non-zero -> 0; 111 -> 111;
    a redirect with no queue writer reachable is temporary."""
    grep = ["grep", "-q", "^From the top"]
    assert run(tmp_path, "condredirect", "x@example.org", "false").returncode == 0
    assert run(tmp_path, "condredirect", "x@example.org", "sh", "-c", "exit 111").returncode == 111
    assert run(tmp_path, "condredirect", "x@example.org").returncode == 100
    res = run(tmp_path, "condredirect", "x@example.org", *grep, skip=20)
    assert res.returncode == 111
    assert b"qq unable to reach the queue writer" in res.stderr
    assert run(tmp_path, "condredirect", "x@e.org", "true", env={"SENDER": "-"}).returncode == 100


def test_forward_needs_its_environment(tmp_path: Path) -> None:
    assert run(tmp_path, "forward").returncode == 100
    assert run(tmp_path, "forward", "a@b.example", env={"NEWSENDER": "-"}).returncode == 100
    assert run(tmp_path, "forward", "a@b.example", env={"DTLINE": "-"}).returncode == 100
    assert run(tmp_path, "forward", "a@b.example").returncode == 111  # no queue here


def test_maildir2mbox_moves_everything_once(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True)
    (md / "new" / "1.a.host").write_bytes(b"Return-Path: <x y@example.org>\nSubject: one\n\nhi\n")
    (md / "cur" / "2.b.host:2,S").write_bytes(b"Subject: two\n\nFrom me\n")
    os.utime(md / "new" / "1.a.host", (1, 1))
    mbox = tmp_path / "mbox"
    mbox.write_bytes(b"From old@example.org Thu Jan 01 00:00:00 1970\nSubject: old\n\nold\n\n")
    env = {"MAILDIR": str(md), "MAIL": str(mbox), "MAILTMP": str(tmp_path / "mbox.tmp")}
    res = run(tmp_path, "maildir2mbox", env=env)
    assert res.returncode == 0, res.stderr
    assert list((md / "new").iterdir()) == []
    assert list((md / "cur").iterdir()) == []
    box = mailbox.mbox(str(mbox), create=False)
    try:
        subjects = [m["Subject"] for m in box]
        froms = [m.get_from() for m in box]
    finally:
        box.close()
    assert subjects == ["old", "one", "two"]  # old mail first, then oldest file first
    assert froms[1] == "x-y@example.org Thu Jan 01 00:00:01 1970"
    assert froms[2].startswith("XXX ")
    assert b"\n>From me\n" in mbox.read_bytes()
    assert run(tmp_path, "maildir2mbox", env={**env, "MAILTMP": "-"}).returncode == 111


def test_qreceipt_answers_only_a_matching_request_from_a_real_sender(tmp_path: Path) -> None:
    """No field, or a bounce (empty SENDER / #@[]): nothing is queued (exit 0 without
    reaching the queue); a matching field tries the queue (here: unreachable, 111)."""
    assert run(tmp_path, "qreceipt", "joe@example.net").returncode == 0
    assert run(tmp_path, "qreceipt").returncode == 100
    asking = b"Notice-Requested-Upon-Delivery-To: a@b.example,\n  JOE@example.net\n"
    msg = tmp_path / "asking"
    msg.write_bytes(asking + MESSAGE)
    env = {"PATH": os.environ["PATH"], "QMAILHOME": str(tmp_path / "nohome"), **ENV}
    for sender, code in (("s@example.org", 111), ("", 0), ("#@[]", 0)):
        with open(msg, "rb") as fh:
            res = subprocess.run(
                [str(BIN / "qreceipt"), "joe@example.net"],
                stdin=fh,
                env={**env, "SENDER": sender},
                capture_output=True,
                timeout=60,
                check=False,
            )
        assert res.returncode == code, (sender, res.stderr)
