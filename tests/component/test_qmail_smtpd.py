"""qmail-smtpd on plain pipes: $QMAILQUEUE, control-file limits and time limits.

No MTA runs here: with QMAILQUEUE set, the message never touches the queue
writer, exactly the hook qmail's content filters use.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.harness import BIN, environ_with_home, write_control

# A qmail-queue stand-in: keeps fd 0 and fd 1 as files, exits with $QQ_EXIT.
QQ = """#!/bin/sh
cat > "$QQ_DIR/message"
cat <&1 > "$QQ_DIR/envelope"
printf '%s' "$TCPREMOTEIP" > "$QQ_DIR/remoteip"
[ "$QQ_EXIT" = kill ] && kill -9 $$
exit "$QQ_EXIT"
"""
DIALOG = (
    b"EHLO client.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<postmaster@localhost>\r\n"
    b"DATA\r\nSubject: filtered\r\n\r\nbody\r\n.\r\nQUIT\r\n"
)


@pytest.fixture
def home(home: Path) -> Path:
    write_control(home, "rcptcheck", "0\n")  # no rcptcheck service without the MTA
    return home


def run_smtpd(home: Path, data: bytes, **env: str) -> tuple[int, list[bytes]]:
    environ = environ_with_home(home)
    environ.update(TCPREMOTEIP="192.0.2.7", TCPLOCALIP="127.0.0.1", **env)
    proc = subprocess.run(
        [str(BIN / "qmail-smtpd")],
        input=data,
        capture_output=True,
        env=environ,
        timeout=60,
        check=False,
    )
    return proc.returncode, [ln for ln in proc.stdout.split(b"\r\n") if ln[3:4] == b" "]


def qq_script(tmp_path: Path) -> Path:
    script = tmp_path / "qq.sh"
    script.write_text(QQ)
    script.chmod(0o755)
    return script


def test_qmailqueue_gets_message_on_fd0_and_envelope_on_fd1(home: Path, tmp_path: Path) -> None:
    code, replies = run_smtpd(
        home, DIALOG, QMAILQUEUE=str(qq_script(tmp_path)), QQ_DIR=str(tmp_path), QQ_EXIT="0"
    )
    assert code == 0
    assert replies[-2].startswith(b"250 2.0.0 ok ")
    assert (tmp_path / "envelope").read_bytes() == b"Fa@example.org\0Tpostmaster@localhost\0\0"
    message = (tmp_path / "message").read_bytes()
    assert message.startswith(b"Received: from unknown (HELO client.example) (192.0.2.7)\n")
    assert message.endswith(b"\nSubject: filtered\n\nbody\n")
    assert (tmp_path / "remoteip").read_text() == "192.0.2.7"  # filters see tcpserver's env


@pytest.mark.parametrize(
    ("qq_exit", "reply"),
    [
        ("31", b"554 5.3.0 mail server permanently rejected message"),
        ("13", b"554 5.3.0 qq permanent problem"),
        ("71", b"451 4.3.0 mail server temporarily rejected message"),
        ("kill", b"451 4.3.0 qq crashed"),
    ],
)
def test_qmailqueue_exit_codes_map_to_qmails_replies(
    home: Path, tmp_path: Path, qq_exit: str, reply: bytes
) -> None:
    # qmail-protocols §1.1: 11-40 permanent, everything else temporary
    _, replies = run_smtpd(
        home, DIALOG, QMAILQUEUE=str(qq_script(tmp_path)), QQ_DIR=str(tmp_path), QQ_EXIT=qq_exit
    )
    assert replies[-2] == reply


def test_unrunnable_qmailqueue_is_temporary(home: Path, tmp_path: Path) -> None:
    _, replies = run_smtpd(home, DIALOG, QMAILQUEUE=str(tmp_path / "missing"))
    assert b"451 4.3.0 qqt failure" in replies  # DATA refused: nothing was accepted
    assert not any(r.startswith(b"354") for r in replies)


def test_line_length_and_recipient_limits_from_control_files(home: Path) -> None:
    write_control(home, "maxlinelength", "512\n")
    write_control(home, "maxrcpt", "1\n")
    data = (
        b"EHLO client.example\r\nNOOP " + b"x" * 600 + b"\r\nMAIL FROM:<a@example.org>\r\n"
        b"RCPT TO:<postmaster@localhost>\r\nRCPT TO:<postmaster@localhost>\r\nQUIT\r\n"
    )
    code, replies = run_smtpd(home, data)
    assert [r[:3] for r in replies] == [b"220", b"250", b"500", b"250", b"250", b"452", b"221"]
    assert code == 0


@contextlib.contextmanager
def interactive_smtpd(
    home: Path,
) -> Iterator[tuple[subprocess.Popen[bytes], IO[bytes], IO[bytes]]]:
    """qmail-smtpd on pipes the test talks through; killed and its pipes closed after."""
    proc = subprocess.Popen(
        [str(BIN / "qmail-smtpd")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=environ_with_home(home),
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        yield proc, proc.stdin, proc.stdout
    finally:
        proc.kill()
        proc.wait(10)
        for pipe in (proc.stdin, proc.stdout):
            with contextlib.suppress(BrokenPipeError):
                if pipe is not None:
                    pipe.close()


def test_idle_timeout_is_451(home: Path) -> None:
    write_control(home, "timeoutsmtpd", "1\n")
    with interactive_smtpd(home) as (proc, _, stdout):
        assert stdout.readline().startswith(b"220")
        assert stdout.readline() == b"451 timeout (#4.4.2)\r\n"  # stdin open, silent
        assert proc.wait(30) == 1


def test_session_time_limit_is_421(home: Path) -> None:
    write_control(home, "timeoutsmtpdsession", "2\n")
    with interactive_smtpd(home) as (_, stdin, stdout):
        assert stdout.readline().startswith(b"220")
        # a client that keeps the session busy, never idle: only the total limit stops it
        for _ in range(200):
            with contextlib.suppress(BrokenPipeError):  # it may hang up before reading
                stdin.write(b"NOOP\r\n")
                stdin.flush()
            line = stdout.readline()
            if not line.startswith(b"250"):
                break
            time.sleep(0.05)  # pacing, well inside the idle timeout
        assert line.startswith(b"421 session time limit")
