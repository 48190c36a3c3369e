"""A Maildir as qmail-pop3d sees it: a numbered list fixed at login.

qmail-pop3d's rules (qmail-programs §qmail-pop3d, qmail-protocols §8):
tmp/ files untouched for 36 hours are removed; new/ and cur/ are listed
sorted by mtime, names starting with "." skipped; the UIDL is the file name
without its ":info" part, so it survives the move from new/ to cur/ and stays
the same in every session; DELE only marks, QUIT unlinks the marked messages
and renames every other message still in new/ to cur/NAME:2, .

Kept from qmail deliberately not: qmail skips files whose mtime is the
current second (to keep its order stable); here ties are broken by name,
so a message delivered a moment ago is listed at once.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from pyqmail.unix.durable import fsync_dir

TMP_MAX_AGE_S = 36 * 3600
MAX_MESSAGES = 100_000
MAX_NAME_BYTES = 255


class MailboxError(Exception):
    """The Maildir cannot be read (missing, permissions)."""


@dataclass(slots=True)
class Message:
    sub: str  # "new" or "cur"
    name: str  # file name, ":info" included
    size: int
    deleted: bool = False

    @property
    def uid(self) -> str:
        return self.name.split(":", 1)[0]


class Mailbox:
    def __init__(self, path: str, messages: list[Message]) -> None:
        self.path = path
        self.messages = messages
        self.last = 0  # highest message number retrieved (RFC 1725 LAST)

    @classmethod
    def open(cls, path: str, now: float | None = None) -> Mailbox:
        now = time.time() if now is None else now
        try:
            _clean_tmp(os.path.join(path, "tmp"), now)
            found: list[tuple[int, str, Message]] = []
            for sub in ("new", "cur"):
                with os.scandir(os.path.join(path, sub)) as it:
                    for entry in it:
                        if entry.name.startswith(".") or len(entry.name) > MAX_NAME_BYTES:
                            continue
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue  # another reader took it
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        msg = Message(sub, entry.name, st.st_size)
                        found.append((st.st_mtime_ns, msg.uid, msg))
                        if len(found) > MAX_MESSAGES:
                            raise MailboxError(f"more than {MAX_MESSAGES} messages")
        except OSError as exc:
            raise MailboxError(f"cannot read {path}: {exc.strerror}") from None
        found.sort(key=lambda t: (t[0], t[1]))
        return cls(path, [m for _, _, m in found])

    # -- queries by message number (1-based) ----------------------------------

    def get(self, number: int) -> Message | None:
        """The message, None if out of range or deleted."""
        if not 1 <= number <= len(self.messages):
            return None
        msg = self.messages[number - 1]
        return None if msg.deleted else msg

    def live(self) -> Iterator[tuple[int, Message]]:
        for i, msg in enumerate(self.messages, 1):
            if not msg.deleted:
                yield i, msg

    def stat(self) -> tuple[int, int]:
        live = [m.size for _, m in self.live()]
        return len(live), sum(live)

    def file(self, msg: Message) -> str:
        return os.path.join(self.path, msg.sub, msg.name)

    def opened(self, number: int) -> None:
        self.last = max(self.last, number)

    def delete(self, number: int) -> bool:
        msg = self.get(number)
        if msg is None:
            return False
        msg.deleted = True
        return True

    def reset(self) -> None:
        for msg in self.messages:
            msg.deleted = False
        self.last = 0

    def commit(self) -> list[str]:
        """QUIT: unlink deleted, move new/ to cur/NAME:2, ; problems as text."""
        problems: list[str] = []
        touched: set[str] = set()
        for msg in self.messages:
            src = self.file(msg)
            try:
                if msg.deleted:
                    os.unlink(src)
                    touched.add(msg.sub)
                elif msg.sub == "new":
                    name = msg.name if ":" in msg.name else msg.name + ":2,"
                    os.rename(src, os.path.join(self.path, "cur", name))
                    touched.update(("new", "cur"))
            except FileNotFoundError:
                continue  # already gone (another session's QUIT): nothing to undo
            except OSError as exc:
                problems.append(f"{src}: {exc.strerror}")
        for sub in sorted(touched):
            with contextlib.suppress(OSError):
                fsync_dir(os.path.join(self.path, sub))
        return problems


def _clean_tmp(tmp: str, now: float) -> None:
    with contextlib.suppress(FileNotFoundError), os.scandir(tmp) as it:
        for entry in it:
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if now - st.st_atime > TMP_MAX_AGE_S:
                    os.unlink(entry.path)
