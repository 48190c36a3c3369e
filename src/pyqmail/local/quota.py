"""Per-user mailbox quota (beyond qmail): a soft limit from control/quotas.

control/quotas has ``user:BYTES`` lines (the account name from users/assign
or passwd) and optionally ``:BYTES`` for every other user; 0 means no limit.
The limit is soft, as mail servers usually make it: a delivery is deferred
(4.2.2, the message stays queued and is retried) only when the mailbox is
already at or over the limit, so the message that crosses it still lands.
The size counted is the mailbox a .qmail line names: an mbox file, or a
Maildir's new/ and cur/ plus those of its Maildir++ subfolders (``.Name/``).
"""

from __future__ import annotations

import os

from pyqmail.formats.control import ControlError, parse_colon_map

MAX_QUOTA = 1 << 50
MAX_SCANNED_FILES = 10_000_000


def parse_quotas(text: str | None, *, path: str) -> dict[str, int]:
    """user (lowercased) -> bytes; ControlError names a bad line."""
    out: dict[str, int] = {}
    for key, value in parse_colon_map(text).items():
        v = value.strip()
        if not (v.isascii() and v.isdigit()) or int(v) > MAX_QUOTA:
            lines = (text or "").split("\n")
            number = next(
                (i for i, ln in enumerate(lines, 1) if ln.strip().lower().startswith(key + ":")), 0
            )
            raise ControlError(path, number, f"{value!r} is not a byte count")
        out[key] = int(v)
    return out


def limit_for(quotas: dict[str, int], user: str) -> int:
    """The user's limit in bytes; 0: none."""
    return quotas.get(user.lower(), quotas.get("", 0))


def _dir_bytes(path: str, budget: list[int]) -> int:
    total = 0
    try:
        with os.scandir(path) as it:
            for entry in it:
                budget[0] -= 1
                if budget[0] < 0:
                    raise OSError(f"more than {MAX_SCANNED_FILES} files under {path}")
                try:
                    total += entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue  # a reader moved it from new/ to cur/ meanwhile
    except FileNotFoundError:
        return 0
    return total


def maildir_bytes(base: str) -> int:
    """Bytes in new/ and cur/ of a Maildir and of its Maildir++ subfolders.

    A Maildir++ subfolder (it holds a ``maildirfolder`` file) counts as its
    parent: the quota is the user's, not the folder's.
    """
    base = base.rstrip("/")
    if os.path.exists(os.path.join(base, "maildirfolder")):
        base = os.path.dirname(base)
    budget = [MAX_SCANNED_FILES]
    total = _dir_bytes(os.path.join(base, "new"), budget) + _dir_bytes(
        os.path.join(base, "cur"), budget
    )
    with os.scandir(base) as it:
        folders = [e.path for e in it if e.name.startswith(".") and e.name not in (".", "..")]
    for folder in folders:
        if os.path.isdir(os.path.join(folder, "cur")):
            total += _dir_bytes(os.path.join(folder, "new"), budget)
            total += _dir_bytes(os.path.join(folder, "cur"), budget)
    return total
