"""maildir2mbox: move the messages of $MAILDIR to the end of the mbox $MAIL.

Runs as: the mailbox owner. Uses $MAILTMP (same filesystem as $MAIL).
Locks $MAIL (flock), copies it and each message of new/ and cur/ (oldest
first, From_ line from its Return-Path, >From quoting) to $MAILTMP, fsyncs,
renames $MAILTMP over $MAIL, and only then deletes the moved Maildir files:
a crash at any point leaves every message in the Maildir or in the mbox.
Exit:    0; 111 on any trouble (a missing variable included).
"""

from __future__ import annotations

import os
import sys

from pyqmail.formats import mbox as mbox_fmt
from pyqmail.unix import durable
from pyqmail.unix.mboxlock import LockTimeout, lock_mbox

EXIT_TEMP = 111
MAX_MESSAGES = 1_000_000
LOCK_WAIT_S = 30


class Trouble(Exception):
    pass


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise Trouble(f"{name} not set")
    return value


def _messages(maildir: str) -> list[tuple[float, str]]:
    found: list[tuple[float, str]] = []
    for sub in ("new", "cur"):
        with os.scandir(os.path.join(maildir, sub)) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                found.append((e.stat().st_mtime, e.path))
                if len(found) > MAX_MESSAGES:
                    raise Trouble(f"more than {MAX_MESSAGES} messages")
    return sorted(found)


def sender_of(message: bytes) -> bytes:
    """The Return-Path address (qmail-local's first line), else ``XXX`` as qmail uses."""
    if message.startswith(b"Return-Path: <"):
        line = message.split(b"\n", 1)[0]
        addr = line[14:].rstrip(b"\r").removesuffix(b">")
        return addr or b"MAILER-DAEMON"
    return b"XXX"


def convert(maildir: str, mbox: str, mboxtmp: str) -> int:
    moved = _messages(maildir)
    if not moved:
        return 0
    lock = os.open(mbox, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        lock_mbox(lock, LOCK_WAIT_S)
        out = os.open(mboxtmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with open(mbox, "rb") as old:
                while chunk := old.read(1 << 16):
                    durable.write_all(out, chunk)
            for when, path in moved:
                with open(path, "rb") as fh:
                    message = fh.read()
                head = mbox_fmt.from_line(sender_of(message), when)
                durable.write_all(out, mbox_fmt.entry(head, message))
            os.fsync(out)
        finally:
            os.close(out)
        os.rename(mboxtmp, mbox)
        durable.fsync_dir(os.path.dirname(os.path.abspath(mbox)))
    finally:
        os.close(lock)
    for _, path in moved:
        durable.unlink_quiet(path)
    return len(moved)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        print("maildir2mbox: usage: maildir2mbox (MAILDIR, MAIL, MAILTMP set)", file=sys.stderr)
        return EXIT_TEMP
    try:
        convert(_env("MAILDIR"), _env("MAIL"), _env("MAILTMP"))
    except (Trouble, LockTimeout) as exc:
        print(f"maildir2mbox: fatal: {exc}", file=sys.stderr)
        return EXIT_TEMP
    except OSError as exc:
        print(f"maildir2mbox: fatal: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_TEMP
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
