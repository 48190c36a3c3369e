"""Who receives a local part: users/assign, then (as root) passwd, then alias.

qmail-lspawn's order (qmail-files §4): users/assign (qmail-newu's cdb in
qmail), else qmail-getpw's passwd rules, else the alias user.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable

from pyqmail.config import Home
from pyqmail.formats.assign import Assign, UserMatch, parse_assign

MAX_PW_NAME = 32


class AssignCache:
    """users/assign parsed once and re-read when the file changes."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self._stamp: tuple[int, int] | None = None
        self._assign: Assign | None = None

    def get(self) -> Assign | None:
        try:
            st = os.stat(self.home.assign)
        except FileNotFoundError:
            self._stamp, self._assign = None, None
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            with open(self.home.assign, encoding="utf-8", errors="surrogateescape") as fh:
                self._assign = parse_assign(fh.read(), path=self.home.assign)
            self._stamp = stamp
        return self._assign


def getpw(local: str, on_stat_error: Callable[[OSError], None] | None = None) -> UserMatch | None:
    """qmail-getpw: the whole local part, then prefixes ending before a '-'.

    A home directory that cannot be stat'ed is "not a user"; on_stat_error
    (the qmail-getpw program's) may raise instead when the error is temporary.
    """
    cuts = [len(local)] + [i for i in range(len(local) - 1, 0, -1) if local[i] == "-"]
    for cut in cuts:
        name = local[:cut].lower()
        if len(name) >= MAX_PW_NAME or not name:
            continue
        try:
            pw = pwd.getpwnam(name)
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


def resolve(local: str, home: Home, assign: Assign | None) -> UserMatch | None:
    if assign is not None:
        hit = assign.lookup(local)
        if hit is not None:
            return hit
    if os.geteuid() == 0:
        hit = getpw(local)
        if hit is not None:
            return hit
    alias_home = os.path.join(home.root, "alias")
    try:
        st = os.stat(alias_home)
    except OSError:
        return None
    return UserMatch("alias", st.st_uid, st.st_gid, alias_home, "-", local)
