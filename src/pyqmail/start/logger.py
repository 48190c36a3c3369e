"""The log component: every other component's stderr, copied to the operator's stream.

Runs as: qmaill (the invoking user in embedded mode), like qmail's splogger.
Reads:   fd 0, a pipe whose write end every other component has as stderr.
Writes:  fd 1, the supervisor's stdout (a terminal, a file, multilog...).
Trusts:  nothing: bytes are copied, never parsed.

So no component holds the operator's log file itself, and one that is taken
over can write lines into the pipe but cannot truncate or rewrite the log.
"""

from __future__ import annotations

import os
import signal

CHUNK = 65536


def main() -> int:
    # Ctrl-C reaches the whole process group: stay and drain until the
    # supervisor, last of all, closes the pipe
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        data = os.read(0, CHUNK)
        if not data:
            return 0
        try:
            while data:
                data = data[os.write(1, data) :]
        except OSError:
            pass  # a full disk drops log lines, never blocks the mail


if __name__ == "__main__":
    raise SystemExit(main())
