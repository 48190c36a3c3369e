"""qmail-queue: the message on fd 0, the envelope on fd 1, the answer in the exit code.

Runs as: the caller. Hands everything to the queue writer's socket, which
records the caller's uid from the socket itself.
Exit codes: qmail-queue's (qmail-protocols §1.1).
"""

from __future__ import annotations

from pyqmail.config import Home
from pyqmail.formats import envelope as env_fmt
from pyqmail.ipc.queue_proto import submit_sync
from pyqmail.unix.readall import read_all

MAX_READ = 1 << 31


def exit_code(status: str, text: str) -> int:
    if status == "K":
        return 0
    if text.startswith("envelope address too long"):
        return 11
    if status == "D":
        return 31
    for prefix, code in (
        ("qq write error", 53),
        ("qq read error", 54),
        ("qq internal bug", 81),
        ("qq unable to reach", 73),
    ):
        if text.startswith(prefix):
            return code
    return 74


def main() -> int:
    try:
        message = read_all(0, MAX_READ)
        wire = read_all(1, MAX_READ)
    except OSError:
        return 54
    try:
        env_fmt.parse_wire(wire)
    except env_fmt.EnvelopeError as exc:
        return exc.code
    res = submit_sync(Home.from_env().writer_socket, b"local", message, wire)
    return exit_code(res.status, res.text)


if __name__ == "__main__":
    raise SystemExit(main())
