"""Who receives a local part: users/cdb (or users/assign), then passwd, then alias.

qmail-lspawn's order (qmail-files §4): the assignments compiled by
qmail-newu into users/cdb, else qmail-getpw's passwd rules (only when
running as root: otherwise every delivery runs as the one invoking user
anyway), else the alias user.

As in qmail, users/cdb wins when it exists: edits to users/assign take effect
when qmail-newu runs (``pyqmail adduser`` runs it). A home without users/cdb
(an embedded home set up by hand) has its users/assign read directly.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
from collections.abc import Callable
from typing import Protocol

import cdblib

from pyqmail.config import Home
from pyqmail.formats import dotqmail, userscdb
from pyqmail.formats.assign import UserMatch, parse_assign
from pyqmail.unix import accounts

MAX_PW_NAME = 32
MAX_USERS_CDB_BYTES = 1 << 30
MEMO_MAX = 10_000  # local parts remembered per users db


class UserDb(Protocol):
    def lookup(self, local: str) -> UserMatch | None: ...


class CdbUsers:
    """users/cdb read into memory once; lookups follow qmail-lspawn exactly."""

    def __init__(self, data: bytes, path: str) -> None:
        self.path = path
        try:
            self._reader = cdblib.Reader(data=data)
        except (OSError, ValueError, IndexError) as exc:
            raise userscdb.UsersCdbError(f"{path}: not a cdb file ({exc})") from exc

    def _get(self, key: bytes) -> bytes | None:
        try:
            value: bytes | None = self._reader.get(key)
        except (ValueError, IndexError) as exc:  # a truncated or corrupt file
            raise userscdb.UsersCdbError(f"{self.path}: corrupt ({exc})") from exc
        return value

    def lookup(self, local: str) -> UserMatch | None:
        return userscdb.lookup(self._get, local.encode("utf-8", "surrogateescape"))


class MemoUsers:
    """Lookups in one loaded users db, remembered: that db never changes under them
    (a new users/cdb is a new AssignCache load, and a new MemoUsers)."""

    def __init__(self, db: UserDb) -> None:
        self.db = db
        self._hits: dict[str, UserMatch | None] = {}

    def lookup(self, local: str) -> UserMatch | None:
        try:
            return self._hits[local]
        except KeyError:
            pass
        hit = self.db.lookup(local)  # a corrupt db raises, and nothing is remembered
        if len(self._hits) >= MEMO_MAX:
            self._hits.clear()
        self._hits[local] = hit
        return hit


class AssignCache:
    """users/cdb (else users/assign) loaded once and again when the file changes."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self._stamp: tuple[str, int, int, int] | None = None
        self._db: UserDb | None = None

    def get(self) -> UserDb | None:
        for path in (self.home.users_cdb, self.home.assign):
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            stamp = (path, st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                self._db = MemoUsers(self._load(path))
                self._stamp = stamp
            return self._db
        self._stamp, self._db = None, None
        return None

    def _load(self, path: str) -> UserDb:
        if path == self.home.users_cdb:
            with open(path, "rb") as fh:
                data = fh.read(MAX_USERS_CDB_BYTES + 1)
            if len(data) > MAX_USERS_CDB_BYTES:
                raise userscdb.UsersCdbError(f"{path}: over {MAX_USERS_CDB_BYTES} bytes")
            return CdbUsers(data, path)
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return parse_assign(fh.read(), path=path)


def getpw(
    local: str,
    on_stat_error: Callable[[OSError], None] | None = None,
    getpwnam: Callable[[str], pwd.struct_passwd] = pwd.getpwnam,
) -> UserMatch | None:
    """qmail-getpw: the whole local part, then prefixes ending before a '-'.

    A candidate is a user when its uid is not 0 and its home exists and is
    owned by it. A home that cannot be stat'ed is "not a user"; on_stat_error
    may raise instead when the error is temporary (qmail-getpw's exit 115).
    """
    cuts = [len(local)] + [i for i in range(len(local) - 1, 0, -1) if local[i] == "-"]
    for cut in cuts:
        name = local[:cut].lower()
        if len(name) >= MAX_PW_NAME or not name or "\0" in name:
            continue
        try:
            pw = getpwnam(name)
        except KeyError:
            continue
        if pw.pw_uid == 0:
            continue
        try:
            st = os.stat(pw.pw_dir)
        except OSError as exc:
            if on_stat_error is not None:
                on_stat_error(exc)
            continue
        if st.st_uid != pw.pw_uid:
            continue
        if cut == len(local):
            return UserMatch(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, "", "")
        return UserMatch(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, "-", local[cut + 1 :])
    return None


def _defer_unless_missing(exc: OSError) -> None:
    """A home that is there but cannot be examined: defer rather than misroute."""
    if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
        raise exc


def resolve(local: str, home: Home, users: UserDb | None) -> UserMatch | None:
    """The user for local, or None when not even the alias user exists (temporary)."""
    if users is not None:
        hit = users.lookup(local)
        if hit is not None:
            return hit
    if os.geteuid() == 0:
        hit = getpw(local, _defer_unless_missing)
        if hit is not None:
            return hit
    return alias_user(home, local)


def alias_user(
    home: Home, local: str, getpwnam: accounts.GetPwNam = pwd.getpwnam
) -> UserMatch | None:
    """The catch-all user: qmail-getpw's and lspawn's one rule.

    As qmail: the ``alias`` account's uid and gid, with ~alias being
    QMAILHOME/alias (qmail installs the account with that home; this home's
    alias/ is the one meant even if the account says otherwise). That holds
    in a system home, whose deliveries run under qmail's accounts; there a
    missing account is None (qmail's "no alias user", a temporary error).
    An embedded home runs every delivery as its invoking user, so there the
    owner of QMAILHOME/alias is the alias user, account or not.
    """
    alias_home = os.path.join(home.root, "alias")
    if accounts.is_system_home(home.queue, getpwnam):
        ids = accounts.lookup("alias", getpwnam)
        if ids is None:
            return None
        return UserMatch("alias", ids.uid, ids.gid, alias_home, "-", local)
    try:
        st = os.stat(alias_home)
    except OSError:
        return None
    return UserMatch("alias", st.st_uid, st.st_gid, alias_home, "-", local)


def no_mailbox(local: str, home: Home, users: UserDb | None) -> bool:
    """True only when delivery to local would surely fail for good.

    That is qmail-local finding no .qmail file for an extension address
    ("Sorry, no mailbox here by that name", qmail-files §5.1), for the user
    lspawn's resolve() picks, searched in the same candidate_files() order
    local delivery uses. Anything local delivery would call temporary (no
    alias user, an unreadable home, a permission error) is not proof, so it
    gives False and the mail is accepted, as qmail would.
    """
    try:
        user = resolve(local, home, users)
    except OSError:
        return False
    if user is None or not user.dash:
        return False  # no alias user: a deferral; no dash: .qmail or defaultdelivery
    for name, _default in dotqmail.candidate_files(user.dash, user.ext):
        try:
            st = os.lstat(os.path.join(user.home, name))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return False
        # local delivery opens with O_NOFOLLOW and skips what is not a file
        if stat.S_ISREG(st.st_mode):
            return False
    try:
        os.stat(user.home)
    except OSError:
        return False  # an unreachable home is temporary trouble for delivery
    return True
