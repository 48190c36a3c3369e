"""qmail-showctl: how this pyqmail is set up, and what each control file says.

Runs as: anyone. Reads control/ (every file in pyqmail.controlfiles, in
qmail-showctl's words) and lists files it does not know. Writes stdout.
Exit:    0; 111 when QMAILHOME/control cannot be read.
"""

from __future__ import annotations

import os
import pwd
import sys

from pyqmail.config import SPLIT, Home, read_control
from pyqmail.controlfiles import BY_NAME, CONTROL_FILES, describe
from pyqmail.formats import control

# conf-users order, as qmail-showctl prints the ids
QMAIL_USERS = ("alias", "qmaild", "qmaill", "root", "qmailp", "qmailq", "qmailr", "qmails")
QMAIL_GROUPS = ("nofiles", "qmail")
SPAWN_LIMIT = 120
PATERNALISM = 2  # conf-patrn: .qmail files must not be world-writable


def _ids(names: tuple[str, ...], lookup: str) -> str:
    import grp

    out = []
    for name in names:
        try:
            out.append(
                str(pwd.getpwnam(name).pw_uid if lookup == "user" else grp.getgrnam(name).gr_gid)
            )
        except KeyError:
            return f"none (embedded: every program runs as uid {os.getuid()})"
    return ", ".join(out)


def showctl(home: Home) -> tuple[str, int]:
    out = [
        f"qmail home directory: {home.root}.\n",
        "user-ext delimiter: -.\n",
        f"paternalism (in decimal): {PATERNALISM}.\n",
        f"silent concurrency limit: {SPAWN_LIMIT}.\n",
        f"subdirectory split: {SPLIT}.\n",
        f"user ids: {_ids(QMAIL_USERS, 'user')}.\n",
        f"group ids: {_ids(QMAIL_GROUPS, 'group')}.\n",
    ]
    cdir = os.path.join(home.root, "control")
    try:
        names = sorted(os.listdir(cdir))
        me = control.parse_line(read_control(home, "me"), None)
    except OSError:
        out.append(f"Oops! Unable to read {cdir}.\n")
        return "".join(out), 111
    out.extend(describe(home, cf, me) for cf in CONTROL_FILES)
    out.extend(
        f"\n{name}: I have no idea what this file does.\n" for name in names if name not in BY_NAME
    )
    return "".join(out), 0


def main() -> int:
    text, code = showctl(Home.from_env())
    sys.stdout.write(text)
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
