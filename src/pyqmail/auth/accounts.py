"""Who a user name and password log in as: virtual users, then system accounts.

Virtual users have a line in users/password and an ``=NAME`` line in
users/assign (both made by pyqmail; the assign line gives uid, gid and the
home HOME/mailboxes/NAME). When running as root, a name without a
users/password line is looked up with getpwnam and checked against its
/etc/shadow hash with libcrypt's crypt(3). A system account with uid 0
never logs in (the notqmail fix to qmail-pop3d); virtual users of a home
made by root share root's uid, as their deliveries do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hmac
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from pyqmail.auth import pwfile
from pyqmail.config import Home
from pyqmail.formats.control import ControlError
from pyqmail.formats.userscdb import UsersCdbError
from pyqmail.local.users import AssignCache

SHADOW = "/etc/shadow"
MAX_SHADOW_BYTES = 4 << 20
VIRTUAL_SHELL = "/bin/sh"


class TempAuthError(RuntimeError):
    """Cannot decide now (broken file, unreadable shadow): try again later."""


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    groups: tuple[int, ...]


def _assign_entry(home: str, name: str) -> Account:
    """The ``=NAME`` entry, from users/cdb when it exists, as lspawn sees it."""
    try:
        users = AssignCache(Home(home)).get()
        hit = users.lookup(name) if users is not None else None
    except (OSError, ControlError, UsersCdbError) as exc:
        raise TempAuthError(f"cannot read the users of {home}: {exc}") from None
    if hit is None or hit.user != name or hit.dash or hit.ext:
        raise TempAuthError(f"{name} has a password but no ={name} line in users/assign")
    return Account(name, hit.uid, hit.gid, hit.home, VIRTUAL_SHELL, (hit.gid,))


def _shadow_hash(name: str) -> str:
    try:
        with open(SHADOW, encoding="utf-8", errors="surrogateescape") as fh:
            text = fh.read(MAX_SHADOW_BYTES)
    except OSError as exc:
        raise TempAuthError(f"cannot read {SHADOW}: {exc}") from None
    for line in text.split("\n"):
        fields = line.split(":")
        if len(fields) >= 2 and fields[0] == name:
            return fields[1]
    return ""


@functools.cache
def _libcrypt() -> Callable[[bytes, bytes], bytes | None]:
    lib = ctypes.util.find_library("crypt") or "libcrypt.so.1"
    try:
        fn = ctypes.CDLL(lib).crypt
    except (OSError, AttributeError) as exc:
        raise TempAuthError(f"libcrypt unavailable: {exc}") from None
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    fn.restype = ctypes.c_char_p
    return cast("Callable[[bytes, bytes], bytes | None]", fn)


def crypt(password: bytes, setting: str) -> str | None:
    """libcrypt's crypt(3) (Python's crypt module is deprecated, gone in 3.13).

    None when crypt fails. Not thread-safe (static buffer): callers are
    single-threaded processes (checkpassword, a POP3 session).
    """
    out = _libcrypt()(password, setting.encode("ascii", "replace"))
    if not out or out.startswith(b"*"):
        return None
    return bytes(out).decode("ascii", "replace")


def _system_account(name: str, password: bytes) -> Account | None:
    if len(name) > 32 or not pwfile.valid_name(name):
        return None
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    if pw.pw_uid == 0:
        return None
    stored = pw.pw_passwd
    if stored in ("x", "*"):
        stored = _shadow_hash(name)
    # locked ("!..."), disabled ("*") or empty hashes never match
    if not stored or stored[0] in "!*":
        return None
    encrypted = crypt(password, stored)
    if encrypted is None or not hmac.compare_digest(encrypted.encode(), stored.encode()):
        return None
    groups = tuple(os.getgrouplist(pw.pw_name, pw.pw_gid))
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell, groups)


def authenticate(home: str, name: str, password: bytes) -> Account | None:
    """The account, None for a wrong name or password; TempAuthError otherwise."""
    if b"\0" in password or len(password) > pwfile.MAX_PASSWORD_BYTES:
        return None
    try:
        known = pwfile.lookup(home, name)
    except (ControlError, OSError) as exc:
        raise TempAuthError(str(exc)) from None
    if known is not None:
        if not pwfile.check_hash(password, known):
            return None
        account = _assign_entry(home, name)
    elif os.geteuid() == 0:
        account_or_none = _system_account(name, password)
        if account_or_none is None:
            return None
        account = account_or_none
    else:
        pwfile.check_hash(password, pwfile.DECOY)  # same time as a wrong password
        return None
    # A virtual user may share our own uid (an embedded home made by whoever
    # runs pyqmail, root included: then nothing changes uid, as in lspawn);
    # any other path to uid 0 is refused.
    if account.uid == 0 and (known is None or os.geteuid() != 0):
        return None
    return account
