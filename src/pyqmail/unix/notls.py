"""python -m pyqmail.unix.notls MODULE ARGS...: run a component that never speaks TLS.

asyncio imports ssl at start whether or not TLS is ever used, and loading
OpenSSL costs each process about 4.5 MB of resident memory. The queue
writer, send and the lookup service talk only over local sockets and pipes,
so the supervisor starts them through here: ssl is marked absent (asyncio
is written for Pythons built without it) and the component runs as if
started with ``python -m MODULE``. Any attempt to use TLS in such a process
fails loudly with ImportError instead of quietly loading OpenSSL.

``--uvloop`` first: run the component on uvloop (the ``fast`` extra) when
it is installed. uvloop imports ssl when it is imported, for the TLS
transports pyqmail never asks it for (our TLS is net/tls.py, over memory
BIOs). So it is imported here against a stand-in ssl module that has only
the names uvloop reads at import, after asyncio itself has been imported
seeing no ssl at all; then ssl is marked absent again. Measured on
workload (a) at C=10, uvloop takes 0.02 to 0.035 ms of CPU per message off
each of queue, send, rspawn and lookup, and costs each 2.4 to 3.6 MB of
idle memory (OpenSSL would cost 4.5 MB more); the supervisor gives it to
smtpd and the queue writer, the busiest, and keeps the idle total under
issue #11's 150 MB.

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


def _uvloop_without_openssl() -> None:
    import asyncio  # noqa: F401  (first, so that asyncio's modules see no ssl)
    import types

    stand_in = types.ModuleType("ssl", "what uvloop reads from ssl at import, and nothing more")

    class SSLError(OSError):
        pass

    for name in ("SSLWantReadError", "SSLWantWriteError", "SSLSyscallError", "SSLZeroReturnError"):
        setattr(stand_in, name, type(name, (SSLError,), {}))
    stand_in.SSLError = SSLError  # type: ignore[attr-defined]
    stand_in.CertificateError = type("CertificateError", (ValueError,), {})  # type: ignore[attr-defined]
    for name in ("SSLContext", "SSLObject", "MemoryBIO"):
        setattr(stand_in, name, type(name, (), {}))
    stand_in.create_default_context = _no_tls  # type: ignore[attr-defined]
    stand_in.SSL_ERROR_WANT_READ = 2  # type: ignore[attr-defined]
    stand_in.SSL_ERROR_WANT_WRITE = 3  # type: ignore[attr-defined]
    stand_in.SSL_ERROR_SYSCALL = 5  # type: ignore[attr-defined]
    sys.modules["ssl"] = stand_in
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except (ImportError, AttributeError):
        pass  # not installed, or a version that wants more: asyncio's own loop
    finally:
        sys.modules["ssl"] = None  # type: ignore[assignment]


def _no_tls(*_args: object, **_kwargs: object) -> None:
    raise ImportError("no ssl in this process (pyqmail.unix.notls)")


def main() -> None:
    uvloop = sys.argv[1:2] == ["--uvloop"]
    if uvloop:
        del sys.argv[1]
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m pyqmail.unix.notls [--uvloop] MODULE [ARGS...]")
    module = sys.argv.pop(1)
    sys.modules["ssl"] = None  # type: ignore[assignment]
    if uvloop:
        _uvloop_without_openssl()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
