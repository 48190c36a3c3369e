"""Run a helper program with chosen fds, and wait for it from asyncio.

subprocess cannot put a pipe on fd 3 (checkpassword) or on fd 1 while fd 0
is another pipe (qmail-queue); posix_spawn's file actions can. Waiting uses
a pidfd, so no thread and no SIGCHLD handler is involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
from collections.abc import Mapping, Sequence

FIRST_FREE_FD = 10  # above every fd a child is given


def spawn(argv: Sequence[str], fds: Mapping[int, int], env: Mapping[str, str]) -> int:
    """Start argv (searched in PATH) with child fd k = our fd fds[k]; returns the pid.

    Every other fd of ours is close-on-exec already (Python's default);
    raises OSError when the program cannot be started.
    """
    # Move sources out of the way first: dup2(3, 3) would keep close-on-exec,
    # and a source numbered like another target would be overwritten.
    moved = {k: fcntl.fcntl(v, fcntl.F_DUPFD_CLOEXEC, FIRST_FREE_FD) for k, v in fds.items()}
    try:
        actions = [(os.POSIX_SPAWN_DUP2, src, dst) for dst, src in moved.items()]
        return os.posix_spawnp(argv[0], list(argv), dict(env), file_actions=actions)
    finally:
        for fd in moved.values():
            os.close(fd)


async def wait_exit(pid: int, timeout: float) -> int | None:
    """The child's exit code (negative for a signal); None if it ran over timeout.

    A child that runs over is killed and reaped, never left behind.
    """
    loop = asyncio.get_running_loop()
    pidfd = os.pidfd_open(pid)
    try:
        done: asyncio.Future[None] = loop.create_future()
        loop.add_reader(pidfd, wake, done)
        try:
            async with asyncio.timeout(timeout):
                await done
        except TimeoutError:
            _kill(pid)
            return None
        except BaseException:
            _kill(pid)  # cancelled (shutdown): still leave no child behind
            raise
        finally:
            loop.remove_reader(pidfd)
    finally:
        os.close(pidfd)
    _, status = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - the pidfd said it exited
    return os.waitstatus_to_exitcode(status)


def wake(fut: asyncio.Future[None]) -> None:
    """A loop reader/writer callback: resolve fut once."""
    if not fut.done():
        fut.set_result(None)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
