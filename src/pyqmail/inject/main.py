"""qmail-inject: give a message a proper header and queue it.

Runs as: the caller. Reads the message on fd 0.
Reads:   control/{me,defaultdomain,defaulthost,plusdomain,idhost}; the
         environment (QMAILUSER, QMAILHOST, QMAILNAME, QMAILINJECT, ... see
         pyqmail.inject.header); $QMAILMFTFILE.
Writes:  the message to the queue writer's socket, which records the
         caller's uid from the socket ("invoked by uid N"); to the program
         $QMAILQUEUE names instead when it is set (netqmail); with -n, to fd 1.
Trusts:  nothing in the message: header fields and the header are bounded,
         recipients are counted.
Exit:    0 queued (fsynced by the writer); 100 usage, a header line it cannot
         parse, or a permanent queue refusal; 111 anything temporary.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import BinaryIO

from pyqmail.config import Home, InjectConfig
from pyqmail.formats import envelope as env_fmt
from pyqmail.inject.header import (
    EXIT_PERM,
    EXIT_TEMP,
    InjectError,
    Injector,
    parse_mft,
    read_header,
    settings_from_env,
)
from pyqmail.inject.qqprogram import ProgramSubmission
from pyqmail.inject.sgetopt import GetOpt
from pyqmail.ipc.queue_proto import SyncSubmission

USAGE = "qmail-inject: usage: qmail-inject [ -nNaAhH ] [ -f sender ] [ arg ... ]"
COPY_BYTES = 1 << 16


def _mft(env: Mapping[bytes, bytes]) -> frozenset[bytes] | None:
    path = env.get(b"QMAILMFTFILE")
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            return parse_mft(fh.read(1 << 22))
    except FileNotFoundError:
        return None
    except OSError:
        raise InjectError("read error", EXIT_TEMP) from None


def run(
    argv: list[str],
    env: Mapping[bytes, bytes],
    stdin: BinaryIO,
    stdout: BinaryIO,
    home: Home,
) -> int:
    """qmail-inject with explicit inputs; returns the exit code."""
    try:
        return _inject(argv, env, stdin, stdout, home)
    except InjectError as exc:
        print(f"qmail-inject: fatal: {exc.text}", file=sys.stderr)
        return exc.code


def _inject(
    argv: list[str],
    env: Mapping[bytes, bytes],
    stdin: BinaryIO,
    stdout: BinaryIO,
    home: Home,
) -> int:
    mft = _mft(env)
    try:
        cfg = InjectConfig.load(home)
    except OSError:
        raise InjectError("read error", EXIT_TEMP) from None
    settings = settings_from_env(
        env,
        defaulthost=os.fsencode(cfg.defaulthost),
        defaultdomain=os.fsencode(cfg.defaultdomain),
        plusdomain=os.fsencode(cfg.plusdomain),
        idhost=os.fsencode(cfg.idhost),
        mft=mft,
    )
    inj = Injector(settings, now=time.time(), pid=os.getpid())

    strategy = "default"
    queue = True
    opts = GetOpt(argv, "aAhHnNf:")
    while (opt := opts.next()) is not None:
        if opt == "a":
            strategy = "args"
        elif opt == "A":
            strategy = "default"
        elif opt == "h":
            strategy = "header"
        elif opt == "H":
            strategy = "both"
        elif opt == "n":
            queue = False
        elif opt == "N":
            queue = True
        elif opt == "f" and opts.arg is not None:
            inj.set_sender(os.fsencode(opts.arg))
        else:
            print(USAGE, file=sys.stderr)
            return EXIT_PERM
    args = opts.rest
    if strategy == "default":
        strategy = "args" if args else "header"
    if strategy != "header":
        for arg in args:
            inj.add_recipient(os.fsencode(arg))

    try:
        split = read_header(stdin.readline)
    except OSError:
        raise InjectError("read error", EXIT_TEMP) from None
    for field in split.fields:
        inj.field(field)
    header = inj.finish()

    if not queue:
        try:
            stdout.write(inj.return_path_line() + header + split.body_start)
            if split.body_start:
                _stream_body(stdin, stdout.write)
            stdout.flush()
        except OSError:
            raise InjectError("write error", EXIT_TEMP) from None
        return 0

    assert inj.sender is not None  # finish() settles it
    recipients = inj.recipients(from_header=strategy != "args")
    program = env.get(b"QMAILQUEUE")  # netqmail: another qmail-queue program
    sub: SyncSubmission | ProgramSubmission
    try:
        if program:
            sub = ProgramSubmission(os.fsdecode(program))
        else:
            sub = SyncSubmission.open(home.writer_socket, b"local")
    except OSError:
        raise InjectError("unable to run qmail-queue", EXIT_TEMP) from None
    sub.write(header + split.body_start)
    if split.body_start:
        _stream_body(stdin, sub.write)
    wire = env_fmt.format_wire(env_fmt.Envelope(inj.sender, tuple(recipients)))
    result = sub.finish(wire)
    if result.status == "K":
        return 0
    raise InjectError(result.text, EXIT_PERM if result.status == "D" else EXIT_TEMP)


def _stream_body(stdin: BinaryIO, put: Callable[[bytes], object]) -> None:
    """The rest of fd 0, as it is; a last line without a newline gets one."""
    last = b"\n"
    while True:
        try:
            chunk = stdin.read(COPY_BYTES)
        except OSError:
            raise InjectError("read error", EXIT_TEMP) from None
        if not chunk:
            break
        put(chunk)
        last = chunk[-1:]
    if last != b"\n":
        put(b"\n")


def main() -> int:
    return run(sys.argv, os.environb, sys.stdin.buffer, sys.stdout.buffer, Home.from_env())


if __name__ == "__main__":
    raise SystemExit(main())
