"""An lspawn worker takes the jobs waiting for it as one batch.

A real worker process on a real SOCK_SEQPACKET pair, with the jobs queued
before it starts: Maildir-only deliveries are committed as a group, a
delivery that runs a program is announced (SLOW) and runs alone after the
ones before it were reported, and every job is answered once, in order.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from pyqmail.config import Home
from pyqmail.formats.assign import UserMatch
from pyqmail.lspawn.workers import (
    SLOW,
    Request,
    decode_results,
    encode_jobs,
    encode_request,
    run_worker,
)

MESSAGE = b"Subject: batch\n\nbody\n"


def user(tmp_path: Path, name: str, dotqmail: str) -> UserMatch:
    home = tmp_path / name
    for sub in ("tmp", "new", "cur"):
        (home / "Maildir" / sub).mkdir(parents=True)
    home.chmod(0o755)
    (home / ".qmail").write_text(dotqmail)
    (home / ".qmail").chmod(0o644)
    return UserMatch(name, os.getuid(), os.getgid(), str(home), "", "")


def run_batch(tmp_path: Path, jobs: list[tuple[UserMatch, str]]) -> list[bytes]:
    """Queue every job, then start a worker; every record it sends until it exits."""
    qmail = Home(str(tmp_path / "qmail"))
    mess = tmp_path / "qmail" / "queue" / "mess" / "1"
    mess.mkdir(parents=True)
    (mess / "42").write_bytes(MESSAGE)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for u, key in jobs:
        fd = os.open(mess / "42", os.O_RDONLY)
        rcpt = f"{u.user}@example.net".encode()
        req = Request("1/42", b"a@example.org", rcpt, key, False, u, "./Maildir/")
        socket.send_fds(ours, [encode_jobs([encode_request(req)])], [fd])
        os.close(fd)
    pid = os.fork()
    if pid == 0:
        ours.close()
        run_worker(theirs, qmail, os.getuid(), os.getgid())  # never returns
    theirs.close()
    ours.shutdown(socket.SHUT_WR)  # after this batch the worker sees EOF and exits
    ours.settimeout(60)
    records = []
    while data := ours.recv(1 << 16):
        records.append(data)
    ours.close()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return records


def test_a_program_delivery_splits_the_group_and_is_announced(tmp_path: Path) -> None:
    joe = user(tmp_path, "joe", "./Maildir/\n")
    prog = user(tmp_path, "prog", '|echo "$RECIPIENT" >> ran.txt\n./Maildir/\n')
    jobs = [(joe, "1.Q1R1"), (joe, "1.Q1R2"), (prog, "1.Q1R3"), (joe, "1.Q1R4"), (joe, "1.Q1R5")]
    records = run_batch(tmp_path, jobs)
    # the two before the program reported together, SLOW before the program runs
    assert records[1] == SLOW
    assert [len(decode_results(r) or []) for r in records if r != SLOW] == [2, 1, 2]
    results = [res for r in records if r != SLOW for res in decode_results(r) or []]
    assert [(code, grouped) for code, _, grouped in results] == [
        (0, True),
        (0, True),
        (0, False),
        (0, True),
        (0, True),
    ]
    assert all(text == b"did 1+0+0\n" for _, text, grouped in results if grouped)
    assert results[2][1] == b"did 1+0+1\n"
    assert len(os.listdir(tmp_path / "joe" / "Maildir" / "new")) == 4
    assert len(os.listdir(tmp_path / "prog" / "Maildir" / "new")) == 1
    assert (tmp_path / "prog" / "ran.txt").read_text() == "prog@example.net\n"
    assert os.listdir(tmp_path / "joe" / "Maildir" / "tmp") == []


def test_failures_in_a_group_are_reported_each_in_its_place(tmp_path: Path) -> None:
    joe = user(tmp_path, "joe", "./Maildir/\n")
    nobox = user(tmp_path, "nobox", "./Missing/\n")
    jobs = [(joe, "1.Q1R1"), (nobox, "1.Q1R2"), (joe, "1.Q1R3"), (joe, "1.Q1R1")]
    records = run_batch(tmp_path, jobs)
    assert len(records) == 1  # one group, one record of four results
    results = decode_results(records[0]) or []
    assert [code for code, _, _ in results] == [0, 111, 0, 0]
    assert b"Missing" in results[1][1]
    # the same key twice in one group: one file, both reported delivered
    assert sorted(os.listdir(tmp_path / "joe" / "Maildir" / "new")) == [
        f"1.Q1R1.{socket.gethostname()}",
        f"1.Q1R3.{socket.gethostname()}",
    ]


def test_a_user_with_a_quota_is_delivered_alone(tmp_path: Path) -> None:
    """The soft quota is measured before each delivery: no group for that user."""
    joe = user(tmp_path, "joe", "./Maildir/\n")
    ann = user(tmp_path, "ann", "./Maildir/\n")
    (tmp_path / "qmail" / "control").mkdir(parents=True)
    (tmp_path / "qmail" / "control" / "quotas").write_text("joe:1000000\n")
    records = run_batch(tmp_path, [(joe, "1.Q1R1"), (ann, "1.Q1R2"), (joe, "1.Q1R3")])
    assert records[0] == SLOW
    assert records[3] == SLOW  # after ann's group of one was reported
    results = [res for r in records if r != SLOW for res in decode_results(r) or []]
    assert [(code, grouped) for code, _, grouped in results] == [(0, False), (0, True), (0, False)]
    assert len(os.listdir(tmp_path / "joe" / "Maildir" / "new")) == 2


def test_a_record_with_a_descriptor_missing_makes_the_worker_exit_unanswered(
    tmp_path: Path,
) -> None:
    """Not what lspawn sends: no job of it is guessed at; lspawn sees EOF (a crash)."""
    joe = user(tmp_path, "joe", "./Maildir/\n")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    reqs = [
        encode_request(Request("1/42", b"", b"joe@x", f"1.Q1R{i}", False, joe, "./Maildir/"))
        for i in range(2)
    ]
    fd = os.open(tmp_path / "joe" / ".qmail", os.O_RDONLY)
    socket.send_fds(ours, [encode_jobs(reqs)], [fd])
    os.close(fd)
    pid = os.fork()
    if pid == 0:
        ours.close()
        run_worker(theirs, Home(str(tmp_path / "qmail")), os.getuid(), os.getgid())
    theirs.close()
    ours.settimeout(60)
    assert ours.recv(1 << 16) == b""
    ours.close()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 111
    assert os.listdir(tmp_path / "joe" / "Maildir" / "new") == []
