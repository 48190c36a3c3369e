"""preline [-frdFRD] cmd [arg...]: feed cmd the message with UFLINE, RPLINE, DTLINE first.

For programs that expect an mbox-style From_ line and trace fields
(procmail, old MDAs). -f/-r/-d leave out the From_, Return-Path or
Delivered-To line; -F/-R/-D put it back.
Exit:    cmd's exit code; 100 usage, variable missing or cmd not found;
         111 pipe trouble or cmd crashed.
"""

from __future__ import annotations

import contextlib
import getopt
import os
import subprocess
import sys

from pyqmail.cli.helpers import EXIT_PERM, EXIT_TEMP, TEMP_ERRNOS, Fatal, fail, need_env

USAGE = "usage: preline cmd [ arg ... ]"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        try:
            flags, cmd = getopt.getopt(args, "frdFRD")
        except getopt.GetoptError as exc:
            raise Fatal(EXIT_PERM, USAGE) from exc
        want = {"f": True, "r": True, "d": True}
        for flag, _ in flags:
            want[flag[1].lower()] = flag[1].isupper()
        if not cmd:
            raise Fatal(EXIT_PERM, USAGE)
        lines = [need_env("UFLINE"), need_env("RPLINE"), need_env("DTLINE")]
        head = b"".join(line for line, on in zip(lines, want.values(), strict=True) if on)
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
        except OSError as exc:
            code = EXIT_TEMP if exc.errno in TEMP_ERRNOS else EXIT_PERM
            raise Fatal(code, f"unable to run {cmd[0]}: {exc.strerror}") from exc
        assert proc.stdin is not None
        # a command that stops reading early is its own business: its exit
        # code, not our broken pipe, is the verdict (as in qmail's preline)
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(head)
            while chunk := os.read(0, 1 << 16):
                proc.stdin.write(chunk)
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        code = proc.wait()
        if code < 0:
            raise Fatal(EXIT_TEMP, f"{cmd[0]} crashed")
    except Fatal as exc:
        return fail("preline", exc)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
