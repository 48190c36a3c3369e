"""Dropping privileges, the same way every time."""

from __future__ import annotations

import os
from collections.abc import Sequence


class PrivilegeError(RuntimeError):
    pass


def drop_privileges(uid: int, gid: int, groups: Sequence[int] = ()) -> None:
    """Become uid/gid for good. Not root: nothing to drop (embedded mode)."""
    if os.geteuid() != 0:
        return
    if uid == 0:
        raise PrivilegeError("root is never a mail user")
    os.setgroups(list(groups) or [gid])
    os.setresgid(gid, gid, gid)  # gid before uid: only root may set it
    os.setresuid(uid, uid, uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError("could regain root after dropping")
