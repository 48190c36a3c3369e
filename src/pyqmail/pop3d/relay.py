"""Copy a POP3 session between the client's Channel and a child on a socketpair.

Used where the process that holds the connection (and its TLS state) is not
the one that may open the mailbox: qmail-popup after STLS, and the built-in
listener, whose network-facing half never runs as the mailbox owner.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl

from pyqmail.pop3d.channel import Channel, Timeout

RELAY_BYTES = 65536


def relay(chan: Channel, sock: socket.socket, pid: int) -> int:
    """Copy both ways until the child pid has exited and said everything; its wait status."""
    sock.setblocking(False)
    status = -1
    client_open = True
    while True:
        if status == -1:
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
        rlist: list[int] = [sock.fileno()]
        if client_open and not chan.tls_pending():
            rlist.append(chan.rfd)
        ready = rlist if chan.tls_pending() else select.select(rlist, [], [], 0.5)[0]
        if not ready and status != -1:
            break
        if client_open and (chan.rfd in ready or chan.tls_pending()):
            try:
                data = chan.read_some()
            except (OSError, ssl.SSLError, Timeout):
                data = None
            if data is None:
                client_open = False
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
            elif data:
                sock.setblocking(True)
                sock.sendall(data)
                sock.setblocking(False)
        if sock.fileno() in ready:
            try:
                out = sock.recv(RELAY_BYTES)
            except BlockingIOError:
                continue
            except OSError:
                out = b""
            if not out:
                if status == -1:
                    status = os.waitpid(pid, 0)[1]
                break
            chan.write(out)
    return status
