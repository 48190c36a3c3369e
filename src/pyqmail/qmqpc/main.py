"""qmail-qmqpc: the qmail-queue interface, handing the message to a QMQP server.

Runs as: the caller (a mini-qmail node links qmail-queue to it).
Reads:   the message on fd 0, then the envelope on fd 1 (qmail-queue's
         order); control/qmqpservers (IP, IP:PORT or [IPv6]:PORT per line).
Writes:  nothing local; the message goes to the first server that connects.
Exit:    qmail-qmqpc's: 0 K, 31 D, 71 Z, 54 read error, 55 no usable
         control/qmqpservers, 72 connect timeout, 73 connect refused,
         74 communication failed, 91 (and 11) bad envelope.
"""

from __future__ import annotations

import asyncio
import io
import sys

from pyqmail.config import Home, QmqpcConfig
from pyqmail.formats import envelope as env_fmt
from pyqmail.formats.control import ControlError
from pyqmail.qmqpc.client import send_qmqp
from pyqmail.unix.readall import read_all

MAX_MESSAGE_BYTES = 1 << 31  # qmail-qmqpc holds the message in memory too
MAX_ENVELOPE_BYTES = 64 << 20


def main() -> int:
    try:
        message = read_all(0, MAX_MESSAGE_BYTES)
        wire = read_all(1, MAX_ENVELOPE_BYTES)
    except OSError:
        return 54
    try:
        env = env_fmt.parse_wire(wire)
    except env_fmt.EnvelopeError as exc:
        return exc.code
    try:
        cfg = QmqpcConfig.load(Home.from_env())
    except (ControlError, OSError) as exc:
        print(f"qmail-qmqpc: {exc}", file=sys.stderr)
        return 55
    res = asyncio.run(
        send_qmqp(cfg.servers, io.BytesIO(message), len(message), env.sender, env.recipients)
    )
    return res.code


if __name__ == "__main__":
    raise SystemExit(main())
