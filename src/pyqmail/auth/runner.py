"""Run a program speaking the checkpassword interface, for SMTP AUTH.

The program gets "user\\0password\\0timestamp\\0" on fd 3 and, on success,
execs the rest of its command line; smtpd appends `true` there, so exit 0
means the password was right (cr.yp.to/checkpwd/interface.html). Exit 1 is
a wrong password; anything else (2 misuse, 111 temporary trouble, a crash,
a timeout) is a temporary failure, so a broken checker never reads as a
verdict on the client's password.

The command comes from control/checkpassword (one line, shell-like
quoting, no shell); without that file it is pyqmail-checkpassword, which
checks pyqmail's hashed password file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from enum import Enum

from pyqmail.unix.spawn import spawn, wait_exit

CHECK_TIMEOUT_S = 30.0
DEFAULT_PROGRAM = "pyqmail-checkpassword"


class Verdict(Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"


def default_command() -> tuple[str, ...]:
    beside = os.path.join(os.path.dirname(sys.executable), DEFAULT_PROGRAM)  # same venv as smtpd
    return (beside if os.path.exists(beside) else DEFAULT_PROGRAM,)


def true_program() -> str:
    # here: shutil and pathlib would be ~1 MB in the lookup service for this one call
    import shutil

    return shutil.which("true") or "/bin/true"


async def check_password(
    command: Sequence[str],
    user: bytes,
    password: bytes,
    timestamp: bytes,
    env: dict[str, str] | None = None,
    timeout: float = CHECK_TIMEOUT_S,
) -> Verdict:
    """Ask the checker about user and password. Never raises for its failures."""
    argv = [*(command or default_command()), true_program()]
    payload = user + b"\0" + password + b"\0" + timestamp + b"\0"
    rfd, wfd = os.pipe()
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        try:
            # bounded by the AUTH line limit, far below a pipe's buffer: the
            # write cannot block before the child starts reading
            os.write(wfd, payload)
        finally:
            os.close(wfd)
        pid = spawn(argv, {0: devnull, 1: devnull, 3: rfd}, env or dict(os.environ))
    except OSError:
        return Verdict.TEMPFAIL
    finally:
        os.close(rfd)
        os.close(devnull)
    code = await wait_exit(pid, timeout)
    if code == 0:
        return Verdict.ACCEPT
    if code == 1:
        return Verdict.REJECT
    return Verdict.TEMPFAIL
