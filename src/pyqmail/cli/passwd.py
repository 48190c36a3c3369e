"""pyqmail passwd USER: set a virtual user's password in users/password.

The password is the first line of stdin (so scripts can pipe it in); its
newline is not part of it. The user must exist (``pyqmail adduser``).
"""

from __future__ import annotations

import sys
from typing import BinaryIO

from pyqmail.auth import pwfile
from pyqmail.config import Home
from pyqmail.formats.assign import parse_assign
from pyqmail.formats.control import ControlError


def set_user_password(home: Home, name: str, stdin: BinaryIO) -> int:
    """0 done, 100 refused (bad input or unknown user), 111 trouble."""
    try:
        with open(home.assign, encoding="utf-8", errors="surrogateescape") as fh:
            assign = parse_assign(fh.read(), path=home.assign)
    except FileNotFoundError:
        print(f"pyqmail passwd: {home.assign} missing; run pyqmail init", file=sys.stderr)
        return 111
    except ControlError as exc:
        print(f"pyqmail passwd: {exc}", file=sys.stderr)
        return 111
    if name not in assign.exact:
        print(f"pyqmail passwd: no user {name!r}; add it with pyqmail adduser", file=sys.stderr)
        return 100
    line = stdin.readline(pwfile.MAX_PASSWORD_BYTES + 2)
    password = line.rstrip(b"\n").rstrip(b"\r")
    if len(password) > pwfile.MAX_PASSWORD_BYTES:
        print(
            f"pyqmail passwd: password longer than {pwfile.MAX_PASSWORD_BYTES} bytes",
            file=sys.stderr,
        )
        return 100
    try:
        pwfile.set_password(home.root, name, password)
    except ValueError as exc:  # ControlError included: a broken file is never rewritten
        print(f"pyqmail passwd: {exc}", file=sys.stderr)
        return 100 if not isinstance(exc, ControlError) else 111
    except OSError as exc:
        print(f"pyqmail passwd: {exc}", file=sys.stderr)
        return 111
    print(f"password set for {name} in {pwfile.password_path(home.root)}")
    return 0
