"""pyqmail init and adduser: make a working home, never overwrite one."""

from __future__ import annotations

import fcntl
import os

from pyqmail.cli.newu import compile_users
from pyqmail.config import Home
from pyqmail.formats.assign import format_assign_line, parse_assign
from pyqmail.layout import make_queue
from pyqmail.unix import accounts

DEFAULT_TCPRULES = (
    "# first matching line wins (tcprules format)\n"
    '127.:allow,RELAYCLIENT=""\n'
    '::1:allow,RELAYCLIENT=""\n'
    ":allow\n"
)

# QMQP has no relay control at all (qmail-programs §3): only loopback may use it
DEFAULT_TCPRULES_QMQP = (
    "# first matching line wins (tcprules format)\n127.:allow\n::1:allow\n:deny\n"
)


def _write_new(path: str, text: str, mode: int = 0o644) -> bool:
    """Create path with text unless it exists. True if written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def make_maildir(path: str) -> None:
    for sub in ("", "tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)


def mailbox_home(home: Home, name: str) -> str:
    return os.path.join(home.root, "mailboxes", name)


def init_home(home: Home, me: str) -> list[str]:
    """Create what is missing; returns the files written."""
    written: list[str] = []
    for sub in ("control", "users", "alias", "mailboxes", "log"):
        os.makedirs(os.path.join(home.root, sub), mode=0o755, exist_ok=True)
    os.chmod(os.path.join(home.root, "alias"), 0o755)  # noqa: S103 - qmail's mode for ~alias
    make_queue(home)
    controls = {
        "me": f"{me}\n",
        "locals": f"{me}\n",
        "rcpthosts": f"{me}\n",
        "defaultdelivery": "./Maildir/\n",
        "tcprules.smtp": DEFAULT_TCPRULES,
        "tcprules.qmtp": DEFAULT_TCPRULES,
        "tcprules.qmqp": DEFAULT_TCPRULES_QMQP,
    }
    for name, text in controls.items():
        if _write_new(home.control(name), text):
            written.append(home.control(name))
    for alias in ("root", "mailer-daemon"):
        path = os.path.join(home.root, "alias", f".qmail-{alias}")
        if _write_new(path, f"&postmaster@{me}\n"):
            written.append(path)
    make_maildir(os.path.join(home.root, "alias", "Maildir"))
    if _write_new(home.assign, ".\n", 0o644):
        written.append(home.assign)
    with open(home.assign, encoding="utf-8") as fh:
        known = parse_assign(fh.read(), path=home.assign)
    if known.lookup("postmaster") is None:
        add_user(home, "postmaster")
    if not os.path.exists(home.users_cdb):
        compile_users(home)  # lspawn reads users/cdb, as qmail-lspawn does
        written.append(home.users_cdb)
    return written


def mailbox_owner(home: Home) -> accounts.Ids:
    """Virtual mailboxes belong to the home's owner; in a system home to alias.

    Never root in a system home: a delivery runs as the mailbox's uid.
    """
    if accounts.is_system_home(home.queue):
        alias = accounts.lookup("alias")
        if alias is not None:
            return alias
    st = os.stat(home.root)
    return accounts.Ids(st.st_uid, st.st_gid)


def add_user(home: Home, name: str) -> str:
    """A virtual user: users/assign lines, a home under mailboxes/, a Maildir."""
    if (
        not name
        or any(c in name for c in ":/\n\0 ")
        or name.startswith(".")
        or name != name.lower()
    ):
        raise ValueError(f"{name!r} is not a usable user name (lowercase, no ':', '/' or spaces)")
    owner = mailbox_owner(home)
    uhome = mailbox_home(home, name)
    os.makedirs(uhome, mode=0o755, exist_ok=True)
    make_maildir(os.path.join(uhome, "Maildir"))
    _write_new(os.path.join(uhome, ".qmail"), "./Maildir/\n", 0o644)
    # user-anything@ lands in the same Maildir, as plus-addressing users expect
    _write_new(os.path.join(uhome, ".qmail-default"), "./Maildir/\n", 0o644)
    if os.geteuid() == 0:
        for root, dirs, files in os.walk(uhome):
            for entry in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.lchown(entry, owner.uid, owner.gid)
    with open(home.assign, "r+", encoding="utf-8") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        text = fh.read()
        assign = parse_assign(text, path=home.assign)
        if name in assign.exact:
            raise ValueError(f"{name} already exists in {home.assign}")
        lines = [ln for ln in text.split("\n") if ln and ln != "."]
        lines.append(format_assign_line("=", name, name, owner.uid, owner.gid, uhome, "", ""))
        lines.append(
            format_assign_line("+", f"{name}-", name, owner.uid, owner.gid, uhome, "-", "")
        )
        new_text = "\n".join(lines) + "\n.\n"
        parse_assign(new_text, path=home.assign)
        tmp = home.assign + ".tmp"
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(new_text)
            out.flush()
            os.fsync(out.fileno())
        os.rename(tmp, home.assign)
        compile_users(home)  # qmail-newu: the new user is live only once users/cdb has it
    return uhome
