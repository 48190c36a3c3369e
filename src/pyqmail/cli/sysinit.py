"""pyqmail init --system: qmail's ownerships and modes on a home.

qmail's hier.c, adapted where pyqmail's shape differs:
- queue/ and queue/lock/ are traversable by everyone (0751/0771 instead of
  0750) so any local user can reach the queue writer's socket, as anyone may
  run the setuid qmail-queue; nothing in them is listable or readable;
- queue/lock/ is group-writable: the components of group qmail bind their
  Unix sockets there, and each checks its peer's uid (SO_PEERCRED);
- info/, local/, remote/, bounce/ are 0750 so the queue writer (qmailq, group
  qmail) can see which messages send has taken, when it recovers from a crash;
- users/ is root's alone (qmail leaves it world-readable).
"""

from __future__ import annotations

import contextlib
import os

from pyqmail.cli.homeinit import init_home
from pyqmail.config import SPLIT, Home
from pyqmail.layout import make_queue
from pyqmail.unix import accounts
from pyqmail.unix.accounts import Ids

# path relative to the home, owner, group, mode; "*" = each of the SPLIT subdirectories
QUEUE_MODES: list[tuple[str, str, str, int]] = [
    ("queue", "qmailq", "qmail", 0o751),
    ("queue/lock", "qmailq", "qmail", 0o771),
    ("queue/mess", "qmailq", "qmail", 0o750),
    ("queue/mess/*", "qmailq", "qmail", 0o750),
    ("queue/todo", "qmailq", "qmail", 0o750),
    ("queue/intd", "qmailq", "qmail", 0o700),
    ("queue/pid", "qmailq", "qmail", 0o700),
    ("queue/spare", "qmailq", "qmail", 0o700),
    ("queue/info", "qmails", "qmail", 0o750),
    ("queue/info/*", "qmails", "qmail", 0o750),
    ("queue/local", "qmails", "qmail", 0o750),
    ("queue/local/*", "qmails", "qmail", 0o750),
    ("queue/remote", "qmails", "qmail", 0o750),
    ("queue/remote/*", "qmails", "qmail", 0o750),
    ("queue/bounce", "qmails", "qmail", 0o750),
    ("queue/hold", "qmails", "qmail", 0o750),
    ("queue/lock/trigger", "qmails", "qmail", 0o622),
    ("queue/lock/tcpto", "qmailr", "qmail", 0o644),
]
KEY_GROUPS = {"servercert.pem": "nofiles", "serverkey.pem": "nofiles", "clientcert.pem": "qmail"}
HOME_MODES: list[tuple[str, str, str, int]] = [
    ("", "root", "qmail", 0o755),
    ("control", "root", "qmail", 0o755),
    ("users", "root", "root", 0o700),
    ("alias", "alias", "nofiles", 0o2755),
    ("mailboxes", "root", "qmail", 0o755),
    ("log", "qmaill", "nofiles", 0o750),
]


def init_system(home: Home, me: str) -> list[str]:
    """qmail's accounts, then a home with qmail's owners and modes; what was done."""
    done = [f"created {m}" for m in accounts.create_accounts(os.path.join(home.root, "alias"))]
    ids = accounts.qmail_ids()
    if ids is None:
        raise SystemExit("pyqmail init: the qmail users are still missing after useradd")
    # the queue first: it marks a system home, so the users init makes belong to alias
    make_queue(home)
    apply_system_modes(home, ids)
    done += [f"wrote {path}" for path in init_home(home, me)]
    apply_system_modes(home, ids)
    return done


def _expand(rel: str) -> list[str]:
    if rel.endswith("/*"):
        return [f"{rel[:-2]}/{n}" for n in range(SPLIT)]
    return [rel]


def apply_system_modes(home: Home, ids: dict[str, Ids]) -> None:
    """chown/chmod the home; files inside follow their directory's owner."""
    import grp

    gids = {g: grp.getgrnam(g).gr_gid for g in ("qmail", "nofiles", "root")}
    uids = {name: i.uid for name, i in ids.items()} | {"root": 0}
    for rel, user, group, mode in HOME_MODES + QUEUE_MODES:
        for sub in _expand(rel):
            path = os.path.join(home.root, sub) if sub else home.root
            if not os.path.exists(path):
                continue
            os.chown(path, uids[user], gids[group])
            os.chmod(path, mode)
            if os.path.isdir(path) and not sub.startswith("queue/lock"):
                _own_files(path, uids[user], gids[group])
    control_dir = os.path.join(home.root, "control")
    for name in os.listdir(control_dir) if os.path.isdir(control_dir) else []:
        path = home.control(name)
        if os.path.isfile(path):
            # private keys: the listeners' (qmaild, group nofiles) and rspawn's
            # (qmailr, group qmail) are readable by that group and root only
            group = KEY_GROUPS.get(name, "qmail")
            os.chown(path, 0, gids[group])
            os.chmod(path, 0o640 if name in KEY_GROUPS else 0o644)
    alias = ids["alias"]
    for top in ("alias", "mailboxes"):
        base = os.path.join(home.root, top)
        for entry in os.listdir(base) if os.path.isdir(base) else []:
            _chown_tree(os.path.join(base, entry), alias.uid, alias.gid)


def _own_files(directory: str, uid: int, gid: int) -> None:
    for entry in os.scandir(directory):
        if entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.chown(entry.path, uid, gid)


def _chown_tree(top: str, uid: int, gid: int) -> None:
    os.lchown(top, uid, gid)
    for root, dirs, files in os.walk(top):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), uid, gid)
