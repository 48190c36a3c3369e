"""qmail's users and groups, and which component runs as which.

A *system home* is one made by ``pyqmail init --system``: its queue/ belongs
to qmailq. Only there, and only when started as root, does every component
get its own uid; an embedded home runs everything as the invoking user (the
boundaries between processes stay, the uids collapse).
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass

# qmail's INSTALL.ids: the group each user is created in
GROUPS = ("qmail", "nofiles")
USERS = {
    "alias": "nofiles",
    "qmaild": "nofiles",
    "qmaill": "nofiles",
    "qmailp": "nofiles",
    "qmailq": "qmail",
    "qmailr": "qmail",
    "qmails": "qmail",
}
# None: stays root (lspawn forks deliveries that become the recipient)
COMPONENT_USER: dict[str, str | None] = {
    "queue": "qmailq",
    "clean": "qmailq",
    "send": "qmails",
    "rspawn": "qmailr",
    "smtpd": "qmaild",
    "qmtpd": "qmaild",
    "qmqpd": "qmaild",
    "lspawn": None,
    "log": "qmaill",
    "lookup": None,  # sees what lspawn sees: homes, users/password, shadow
    "pop3d": None,  # forks each session: its network half becomes qmaild, its
    # guard checks the password and becomes the mailbox owner
}
# what faces the network gets hard resource limits
NETWORK_FACING = frozenset({"smtpd", "qmtpd", "qmqpd", "rspawn", "pop3d"})


@dataclass(frozen=True, slots=True)
class Ids:
    uid: int
    gid: int


GetPwNam = Callable[[str], pwd.struct_passwd]


def lookup(name: str, getpwnam: GetPwNam = pwd.getpwnam) -> Ids | None:
    try:
        pw = getpwnam(name)
    except KeyError:
        return None
    return Ids(pw.pw_uid, pw.pw_gid)


def qmail_ids() -> dict[str, Ids] | None:
    """Every qmail user's ids, or None if any is missing."""
    found: dict[str, Ids] = {}
    for name in USERS:
        ids = lookup(name)
        if ids is None:
            return None
        found[name] = ids
    return found


def is_system_home(queue_dir: str, getpwnam: GetPwNam = pwd.getpwnam) -> bool:
    ids = lookup("qmailq", getpwnam)
    try:
        owner = os.stat(queue_dir).st_uid
    except OSError:
        return False
    return ids is not None and owner == ids.uid


def component_ids(component: str, queue_dir: str) -> Ids | None:
    """The uid/gid a component should run as; None means "as I am"."""
    if os.geteuid() != 0 or not is_system_home(queue_dir):
        return None
    user = COMPONENT_USER.get(component, "qmaild")  # unknown listeners: least privilege
    return None if user is None else lookup(user)


def create_accounts(alias_home: str) -> list[str]:
    """groupadd/useradd what is missing (qmail's INSTALL.ids); returns what was made."""
    import subprocess  # here: only pyqmail init needs it, not every component importing us

    made: list[str] = []
    for group in GROUPS:
        try:
            grp.getgrnam(group)
        except KeyError:
            subprocess.run(["groupadd", "--system", group], check=True)
            made.append(f"group {group}")
    nologin = next(
        (p for p in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false") if os.path.exists(p)),
        "/bin/false",
    )
    for user, group in USERS.items():
        if lookup(user) is not None:
            continue
        home = alias_home if user == "alias" else "/nonexistent"
        subprocess.run(
            ["useradd", "--system", "-g", group, "-d", home, "-M", "-s", nologin, user],
            check=True,
        )
        made.append(f"user {user}")
    return made


def unreachable_code() -> str | None:
    """A directory on the way to the interpreter or pyqmail that others cannot enter.

    The components exec Python after dropping root; a path the qmail users
    cannot traverse would make every one of them fail at start.
    """
    import stat
    import sys

    import pyqmail

    places = {os.path.realpath(sys.executable), sys.prefix, sys.base_prefix}
    places.add(os.path.dirname(os.path.realpath(pyqmail.__file__)))
    for place in sorted(places):
        path = place
        while True:
            try:
                mode = os.stat(path).st_mode
            except OSError:
                return path
            if not mode & stat.S_IXOTH:
                return path
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
    return None
