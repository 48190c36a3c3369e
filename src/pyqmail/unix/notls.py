"""python -m pyqmail.unix.notls MODULE ARGS...: run a component that never speaks TLS.

asyncio imports ssl at start whether or not TLS is ever used, and loading
OpenSSL costs each process about 4.5 MB of resident memory. The queue
writer, send and the lookup service talk only over local sockets and pipes,
so the supervisor starts them through here: ssl is marked absent (asyncio
is written for Pythons built without it) and the component runs as if
started with ``python -m MODULE``. Any attempt to use TLS in such a process
fails loudly with ImportError instead of quietly loading OpenSSL.

uvloop needs ssl, so with the ``fast`` extra installed these three run on
asyncio's own loop (unix/loop.py falls back): on workload (a) at C=10 that
measured the same CPU per message within noise (3.28 and 3.29 ms with them
on asyncio, 3.53 and 3.21 ms with them on uvloop and OpenSSL loaded).

smtpd starts here too, then calls ssl_later() once its modules are
imported: its STARTTLS is our own (net/tls.py, over memory BIOs, never
asyncio's TLS, which stays disabled in that process), and imports ssl at
the first certificate it loads. rspawn too: its client STARTTLS is the
same net/tls.py, and remote/tls.py calls ssl_later() when a remote first
offers STARTTLS, so an rspawn that only ever meets plain-text servers
never loads OpenSSL (and runs on asyncio's own loop, as uvloop needs ssl).
"""

from __future__ import annotations

import runpy
import sys


def ssl_later() -> None:
    """Let ssl be imported from now on (asyncio, already imported, keeps without)."""
    entry: object = sys.modules.get("ssl", sys)
    if entry is None:
        del sys.modules["ssl"]


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m pyqmail.unix.notls MODULE [ARGS...]")
    module = sys.argv.pop(1)
    sys.modules["ssl"] = None  # type: ignore[assignment]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
