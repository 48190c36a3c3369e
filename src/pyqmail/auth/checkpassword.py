"""pyqmail-checkpassword: the checkpassword interface over pyqmail's accounts.

Runs as: root (to change to the user's uid) or the invoking user (embedded).
Reads:   fd 3 (``user\\0password\\0timestamp\\0``, < 512 bytes), QMAILHOME,
         HOME/users/password, HOME/users/assign; as root getpwnam and
         /etc/shadow.
Writes:  nothing. Sets USER, HOME, SHELL, chdirs to HOME, execs argv[1:].
Trusts:  nothing on fd 3: sizes are bounded, fields checked.
Exit:    1 bad login, 2 misuse, 111 temporary trouble (DJB's checkpassword).
"""

from __future__ import annotations

import os
import sys

from pyqmail.auth.accounts import Account, TempAuthError, authenticate
from pyqmail.config import Home
from pyqmail.unix.privs import PrivilegeError, drop_privileges

MAX_INPUT_BYTES = 512
EXIT_BAD, EXIT_USAGE, EXIT_TEMP = 1, 2, 111


def read_fd3(fd: int = 3) -> bytes | int:
    """The input, or an exit code: 111 unreadable, 1 when 512 bytes or more."""
    buf = b""
    while True:
        try:
            chunk = os.read(fd, MAX_INPUT_BYTES - len(buf))
        except InterruptedError:
            continue
        except OSError:
            return EXIT_TEMP
        if not chunk:
            break
        buf += chunk
        if len(buf) >= MAX_INPUT_BYTES:
            return EXIT_BAD
    return buf


def split_input(data: bytes) -> tuple[bytes, bytes] | None:
    """user and password; None unless both are NUL-terminated."""
    parts = data.split(b"\0")
    if len(parts) < 3:
        return None
    return parts[0], parts[1]


def become(account: Account) -> int | None:
    """chdir, environment, uid; an exit code on failure."""
    try:
        if os.geteuid() == 0 and account.uid != os.geteuid():
            drop_privileges(account.uid, account.gid, account.groups)
    except (OSError, PrivilegeError):
        return EXIT_BAD
    try:
        os.chdir(account.home)
    except OSError:
        return EXIT_TEMP
    os.environ["USER"] = account.name
    os.environ["HOME"] = account.home
    os.environ["SHELL"] = account.shell
    return None


def run(argv: list[str]) -> int:
    if len(argv) < 2:
        return EXIT_USAGE
    data = read_fd3()
    if isinstance(data, int):
        return data
    fields = split_input(data)
    if fields is None or not fields[0]:
        return EXIT_USAGE
    user, password = fields
    try:
        os.close(3)
    except OSError:
        pass
    name = user.decode("utf-8", "surrogateescape")
    try:
        account = authenticate(Home.from_env().root, name, password)
    except TempAuthError as exc:
        print(f"pyqmail-checkpassword: {exc}", file=sys.stderr)
        return EXIT_TEMP
    if account is None:
        return EXIT_BAD
    code = become(account)
    if code is not None:
        return code
    try:
        os.execvp(argv[1], argv[1:])  # noqa: S606 - checkpassword execs its argv
    except OSError as exc:
        print(f"pyqmail-checkpassword: cannot run {argv[1]}: {exc}", file=sys.stderr)
    return EXIT_TEMP


def main() -> int:
    return run(sys.argv)


if __name__ == "__main__":
    raise SystemExit(main())
