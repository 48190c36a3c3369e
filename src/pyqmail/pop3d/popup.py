"""qmail-popup: POP3 AUTHORIZATION on stdin/stdout, then the checkpassword chain.

Usage:   qmail-popup HOSTNAME SUBPROGRAM [ARGS...]
         (tcpserver 0 110 qmail-popup HOST pyqmail-checkpassword qmail-pop3d Maildir)
Runs as: whoever tcpserver runs it as (root, so checkpassword can change uid).
Reads:   fd 0; TCPREMOTEIP; control/{timeoutpop3d,servercert.pem} under QMAILHOME.
Writes:  fd 1. After PASS or APOP it runs SUBPROGRAM with fd 3 a pipe carrying
         ``user\\0password\\0<timestamp>\\0`` and fd 0/1 the client; under TLS
         the client is a socketpair this process relays through TLS.
Trusts:  nothing from the network: lines and counts are bounded by the engine.
Exit:    1 in all cases when done, as qmail-popup.
Standards: RFC 1939, 2449, 2595.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import sys

from pyqmail.config import Home, Pop3Config
from pyqmail.pop3d.channel import Channel, Timeout
from pyqmail.pop3d.relay import relay
from pyqmail.pop3d.session import (
    PopupPolicy,
    authorize,
    checkpassword_input,
    greeting_timestamp,
    login_failed,
)
from pyqmail.pop3d.tlsconf import stls_context
from pyqmail.proto.pop3 import server as eng
from pyqmail.unix.logfmt import set_component


def _child(argv: list[str], pipe_r: int, client: int | None) -> None:
    """In the forked child: fds in place, then exec; never returns."""
    try:
        if pipe_r != 3:
            os.dup2(pipe_r, 3)
        os.set_inheritable(3, True)  # os.pipe() fds are close-on-exec
        if client is not None:
            os.dup2(client, 0)
            os.dup2(client, 1)
        for fd in (0, 1):
            os.set_blocking(fd, True)
        os.execvp(argv[0], argv)  # noqa: S606 - qmail-popup runs its argv, like qmail
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.write(2, f"qmail-popup: cannot run {argv[0]}: {exc}\n".encode())
    os._exit(111)


def run(argv: list[str], home: Home) -> int:
    if len(argv) < 3:
        print("qmail-popup: usage: qmail-popup hostname subprogram", file=sys.stderr)
        return 1
    hostname, sub = argv[1], argv[2:]
    cfg = Pop3Config.load(home)
    ctx = stls_context(cfg)
    remote = os.environ.get("TCPREMOTEIP", "")
    chan = Channel(0, 1, cfg.timeout)
    engine = eng.POP3Server()
    try:
        login = authorize(chan, engine, PopupPolicy(greeting_timestamp(hostname), ctx, remote))
        if login is None:
            return 1
        pipe_r, pipe_w = os.pipe()
        # commands pipelined behind PASS are already in our buffer: the
        # subprogram gets them through a relay, as it gets TLS-decrypted bytes
        leftover = engine.pending_input()
        pair = socket.socketpair() if chan.tls or leftover else None
        pid = os.fork()
        if pid == 0:
            os.close(pipe_w)
            if pair is not None:
                pair[0].close()
            _child(sub, pipe_r, pair[1].fileno() if pair is not None else None)
        os.close(pipe_r)
        with contextlib.suppress(BrokenPipeError):
            os.write(pipe_w, checkpassword_input(login))  # < 512 bytes: one pipe write
        os.close(pipe_w)
        if pair is not None:
            pair[1].close()
            pair[0].sendall(leftover)
            status = relay(chan, pair[0], pid)
        else:
            status = os.waitpid(pid, 0)[1]
        if os.WIFSIGNALED(status):
            chan.write(engine.err(b"aack, child crashed"))
        elif os.WEXITSTATUS(status) != 0:
            login_failed(chan, engine, login, remote or "unknown")
        chan.close_tls()
    except (Timeout, OSError, ssl.SSLError):
        pass
    return 1


def main() -> int:
    set_component("qmail-popup")
    return run(sys.argv, Home.from_env())


if __name__ == "__main__":
    raise SystemExit(main())
