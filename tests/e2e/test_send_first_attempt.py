"""send's first attempt straight from todo/ (send/scheduler.py, issue #11).

A new message is delivered before anything but todo/N and mess/S/N exists;
it is written out ("spilled") only when something is deferred or fails. These
tests check what that must not change: exactly-once local delivery when send
dies with first attempts done but not yet recorded, or between a spill and
clean's removal of todo/N; retries and bounces after a spill; and the
operator's view and commands for a message still in its first attempt.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import smtplib
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pyqmail.config import Home
from tests.harness import (
    RunningMta,
    mta_with_sink,
    pyqmail,
    running_mta,
    wait_until,
    write_control,
)
from tests.queuefill import write_todo


def _send(mta: RunningMta, sender: str, rcpts: list[str], body: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=30) as c:
        c.sendmail(sender, rcpts, body)


def _queue(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return pyqmail("queue", *args, "--home", str(home))


def _tokens(mta: RunningMta, user: str) -> Counter[str]:
    got = Counter[str]()
    for path in mta.maildir_files(user):
        m = re.search(rb"X-Token: (\w+)", path.read_bytes())
        assert m, path
        got[m.group(1).decode()] += 1
    return got


def _read_by_a_client(mta: RunningMta, user: str) -> None:
    """new/ to cur/ with flags, as an IMAP client does: a redelivery no longer
    collides with the copy in new/, only the "maybe done" search finds it."""
    md = mta.maildir(user)
    for path in (md / "new").iterdir():
        path.rename(md / "cur" / f"{path.name}:2,S")


def _restarted(mta: RunningMta, name: str, old_pid: int) -> bool:
    return f"status: started {name} pid" in mta.log() and mta.component_pid(name) != old_pid


@contextlib.contextmanager
def _clean_stopped(mta: RunningMta) -> Iterator[int]:
    """clean frozen: send's requests to it wait unread in its socket."""
    pid = mta.component_pid("clean")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _kill_send_and_clean(mta: RunningMta, clean_pid: int) -> None:
    """SIGKILL both: the requests clean never read are lost with it."""
    send_pid = mta.component_pid("send")
    os.kill(send_pid, signal.SIGKILL)
    os.kill(clean_pid, signal.SIGKILL)
    wait_until(lambda: _restarted(mta, "send", send_pid), 30, "send to be restarted")
    wait_until(lambda: _restarted(mta, "clean", clean_pid), 30, "clean to be restarted")


def _msg_id(mta: RunningMta, addr: str) -> int:
    ids = re.findall(rf"starting delivery \d+: msg (\d+) to \w+ {re.escape(addr)}\n", mta.log())
    assert ids, f"no delivery to {addr}"
    return int(ids[0])


def test_send_killed_after_local_first_attempts_delivers_each_exactly_once(
    home: Path,
) -> None:
    """Every first attempt succeeded, but clean never removed todo/N: the
    restarted send delivers each message again, as maybe done, and lspawn
    finds every earlier copy (the Maildir name rests on mess/S/N's mtime)."""
    total = 12
    with running_mta(home) as mta:
        with _clean_stopped(mta) as clean_pid:
            for n in range(total):
                body = f"Subject: first {n}\r\nX-Token: tok{n}\r\n\r\nbody {n}\r\n"
                _send(mta, "a@example.org", ["postmaster@localhost"], body.encode())
            mta.wait_for_maildir("postmaster", total)
            wait_until(lambda: mta.log().count("end msg ") >= total, 20, "every end msg")
            assert len(os.listdir(home / "queue" / "todo")) == total  # nothing removed
            _read_by_a_client(mta, "postmaster")
            restart = len(mta.log())
            _kill_send_and_clean(mta, clean_pid)
        wait_until(mta.queue_empty, 60, "the queue to empty")
        again = mta.log()[restart:]
        # every message was delivered again (maybe done), none copied twice
        assert len(re.findall(r"starting delivery \d+: msg \d+ to local ", again)) == total
    assert _tokens(mta, "postmaster") == Counter({f"tok{n}": 1 for n in range(total)})
    assert not any(any((home / "queue" / "info" / str(s)).iterdir()) for s in range(23))


def test_send_killed_between_spill_and_clean_keeps_local_once(home: Path) -> None:
    """A spill (info and remote/ written and synced) whose todo/N clean never
    removed: the next send starts over from todo/N, removing the spill's
    files; the local copy is not made twice, the deferred recipient arrives."""
    with mta_with_sink(home) as (mta, sink):
        with _clean_stopped(mta) as clean_pid:
            body = b"Subject: spill\r\nX-Token: spill1\r\n\r\nx\r\n"
            _send(mta, "a@example.org", ["postmaster@localhost", "defer-1@example.net"], body)
            mta.wait_for_maildir("postmaster", 1)
            wait_until(lambda: "deferral:" in mta.log(), 20, "the deferral")
            msg_id = _msg_id(mta, "defer-1@example.net")
            q = Home(str(home))
            wait_until(lambda: os.path.exists(q.split_path("info", msg_id)), 20, "the spill")
            # the local channel was all done: only remote/ was written
            assert not os.path.exists(q.split_path("local", msg_id))
            with open(q.split_path("remote", msg_id), "rb") as fh:
                assert fh.read() == b"Tdefer-1@example.net\0"
            assert os.path.exists(q.q("todo", str(msg_id)))
            # info/S/N carries the message's birth: mess/S/N's mtime
            birth = os.stat(q.split_path("mess", msg_id)).st_mtime_ns
            assert os.stat(q.split_path("info", msg_id)).st_mtime_ns == birth
            sink.accept_everything = True
            _read_by_a_client(mta, "postmaster")
            _kill_send_and_clean(mta, clean_pid)
        wait_until(mta.queue_empty, 60, "the queue to empty")
        assert _tokens(mta, "postmaster") == Counter({"spill1": 1})
    assert [r for m in sink.messages for r in m.rcpts] == [b"defer-1@example.net"]


def _spilled_remote(home: Path, msg_id: int) -> bytes:
    with open(Home(str(home)).split_path("remote", msg_id), "rb") as fh:
        return fh.read()


def test_deferred_recipient_spills_with_done_marks_and_is_retried(home: Path) -> None:
    write_control(home, "retryunit", "1\n")  # one schedule second = 1 ms
    with mta_with_sink(home) as (mta, sink):
        _send(
            mta,
            "a@example.org",
            ["ok-1@example.net", "defer-1@example.net"],
            b"Subject: d\r\n\r\nx\r\n",
        )
        wait_until(lambda: "deferral:" in mta.log(), 20, "the deferral")
        msg_id = _msg_id(mta, "defer-1@example.net")
        q = Home(str(home))
        wait_until(lambda: not os.path.exists(q.q("todo", str(msg_id))), 20, "the spill")
        assert _spilled_remote(home, msg_id) == b"Dok-1@example.net\0Tdefer-1@example.net\0"
        listing = _queue(home, "list").stdout.splitlines()
        assert listing[1:] == ["  done\tremote\tok-1@example.net", "\tremote\tdefer-1@example.net"]
        pattern = rf"starting delivery \d+: msg {msg_id} to remote defer-1@example.net\n"
        wait_until(lambda: len(re.findall(pattern, mta.log())) >= 2, 20, "a retry")
        sink.accept_everything = True
        wait_until(mta.queue_empty, 30, "the retry to succeed")
    got = sorted(r for m in sink.messages for r in m.rcpts)
    assert got == [b"defer-1@example.net", b"ok-1@example.net"]


def test_permanent_failure_in_first_attempt_bounces(home: Path) -> None:
    with mta_with_sink(home) as (mta, sink):
        rcpts = ["ok-2@example.net", "reject-2@example.net", "postmaster@localhost"]
        _send(mta, "postmaster@localhost", rcpts, b"Subject: pf\r\nX-Token: pf\r\n\r\nx\r\n")
        files = mta.wait_for_maildir("postmaster", 2)  # the copy and the bounce
        wait_until(mta.queue_empty, 30, "the message and its bounce to go")
        texts = sorted(p.read_bytes() for p in mta.maildir_files("postmaster"))
        assert len(files) == 2
        bounce = [t for t in texts if b"MAILER-DAEMON" in t]
        assert len(bounce) == 1
        assert b"<reject-2@example.net>:" in bounce[0]
        assert b"<ok-2@example.net>" not in bounce[0]
    assert [r for m in sink.messages for r in m.rcpts] == [b"ok-2@example.net"]


def _listed(home: Path) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    current: list[str] = []
    for line in _queue(home, "list").stdout.splitlines():
        m = re.search(r"  #(\d+)  ", line)
        if m:
            current = out.setdefault(int(m.group(1)), [line])
        else:
            current.append(line)
    return out


def test_list_hold_delete_release_during_first_attempt(home: Path) -> None:
    """concurrencyremote 0 keeps both first attempts waiting: the messages
    exist only as todo/N, yet list shows them, hold spills one (held), delete
    removes the other with nothing delivered."""
    write_control(home, "concurrencyremote", "0\n")
    q = Home(str(home))
    with mta_with_sink(home) as (mta, sink):
        _send(mta, "a@example.org", ["ok-a@example.net"], b"Subject: a\r\n\r\nx\r\n")
        _send(mta, "a@example.org", ["ok-b@example.net"], b"Subject: b\r\n\r\nx\r\n")
        wait_until(lambda: len(_listed(home)) == 2, 20, "both listed")
        (a, lines_a), (b, lines_b) = sorted(_listed(home).items())
        assert lines_a[1:] == ["\tremote\tok-a@example.net"]
        assert re.fullmatch(rf".* GMT  #{a}  \d+  <a@example.org>", lines_a[0])
        assert lines_b[1:] == ["\tremote\tok-b@example.net"]
        for msg_id in (a, b):  # still only todo/N: a first attempt
            assert os.path.exists(q.q("todo", str(msg_id)))
            assert not os.path.exists(q.split_path("info", msg_id))
        assert _queue(home, "show", str(a)).stdout.startswith(lines_a[0] + "\n")

        res = _queue(home, "hold", str(a))
        assert (res.returncode, res.stdout) == (0, f"message {a} held\n")
        wait_until(lambda: not os.path.exists(q.q("todo", str(a))), 20, "a's spill")
        assert _spilled_remote(home, a) == b"Tok-a@example.net\0"
        assert _listed(home)[a][0].endswith(" held")

        res = _queue(home, "delete", str(b))
        assert (res.returncode, res.stdout) == (0, f"message {b} deleted\n")
        wait_until(lambda: not os.path.exists(q.q("todo", str(b))), 20, "b's removal")
        wait_until(lambda: not os.path.exists(q.split_path("mess", b)), 20, "b's body to go")
        assert list(_listed(home)) == [a]

        write_control(home, "concurrencyremote", "10\n")
        os.kill(mta.component_pid("send"), signal.SIGHUP)
        wait_until(lambda: "reread control files" in mta.log(), 20, "the HUP")
        assert _queue(home, "release", str(a)).returncode == 0
        wait_until(mta.queue_empty, 30, "a to be delivered")
    assert [r for m in sink.messages for r in m.rcpts] == [b"ok-a@example.net"]


def test_many_recipients_are_written_out_before_the_first_attempt(home: Path) -> None:
    """Above FAST_MAX_RCPTS the ordinary path: a crash must never repeat
    thousands of remote deliveries, so info/ and remote/ exist first."""
    write_control(home, "concurrencyremote", "0\n")
    write_control(home, "maxrcpt", "200\n")
    rcpts = [f"ok-{i}@example.net" for i in range(101)]
    q = Home(str(home))
    with mta_with_sink(home) as (mta, _sink):
        _send(mta, "a@example.org", rcpts, b"Subject: many\r\n\r\nx\r\n")
        wait_until(lambda: len(_listed(home)) == 1, 20, "the message listed")
        (msg_id,) = _listed(home)
        wait_until(lambda: os.path.exists(q.split_path("remote", msg_id)), 20, "remote/")
        assert _spilled_remote(home, msg_id) == b"".join(b"T%s\0" % r.encode() for r in rcpts)
        assert os.path.exists(q.split_path("info", msg_id))


def test_todo_left_without_mess_is_finished_at_start(home: Path) -> None:
    """A crash kept clean's removal of mess/S/N but not the todo/N before it:
    the next send finishes the removal instead of trying a message that
    has no body (it was delivered: done/N is asked only after that)."""
    q = Home(str(home))
    msg_id = int(time.time() * 1000) - 5_000_000
    write_todo(q, msg_id, b"a@example.org", [b"postmaster@localhost"], b"Subject: gone\n\nx\n")
    os.unlink(q.split_path("mess", msg_id))
    with running_mta(home) as mta:
        wait_until(lambda: not os.path.exists(q.q("todo", str(msg_id))), 20, "todo/N removed")
        # send's lines of a loop turn go out when the turn ends (unix/logfmt.py),
        # which may be after clean, another process, has carried out its request
        said = f"todo/{msg_id} has no mess: finishing its removal"
        wait_until(lambda: said in mta.log(), 20, "send's log line")
        assert "starting delivery" not in mta.log()
