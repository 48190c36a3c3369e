"""Log lines: one write per loop turn inside an event loop, none lost at exit."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyqmail.unix.logfmt import clean

PROGRAM = """
import asyncio, sys
from pyqmail.unix.logfmt import log, set_component
set_component("t")
log("before the loop")
async def main():
    log("one")
    log("two")
    log("three")
    await asyncio.sleep(0)
    log("last, just before the loop ends")
asyncio.run(main())
"""


def test_lines_arrive_in_order_and_none_is_lost_at_exit() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60, check=True
    )
    lines = out.stderr.splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [
        "before the loop",
        "one",
        "two",
        "three",
        "last, just before the loop ends",
    ]
    assert all(line.startswith("@") and " t: " in line for line in lines)


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed")
def test_one_loop_turn_is_one_write() -> None:
    out = subprocess.run(
        [
            *("strace", "-qq", "-s", "4096", "-e", "trace=write", "-e", "signal=none"),
            *("-o", "/dev/stdout", sys.executable, "-c", PROGRAM),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    writes = [w for w in out.stdout.splitlines() if w.startswith("write(2,")]
    assert len(writes) == 3, writes  # before the loop; one, two, three; the last line
    for word in ("one", "two", "three"):
        assert f" t: {word}" in writes[1]


THREADED = """
import asyncio, sys, threading
from pyqmail.unix.logfmt import log, set_component
set_component("t")
async def main():
    log("loop line")  # the loop's flush is now scheduled
    t = threading.Thread(target=log, args=("thread line",))
    t.start()
    t.join()
    sys.stderr.write("marker\\n")  # written before this turn's flush
    await asyncio.sleep(0)
asyncio.run(main())
"""


def test_a_line_from_another_thread_is_written_at_once_during_a_loop_turn() -> None:
    out = subprocess.run(
        [sys.executable, "-c", THREADED], capture_output=True, text=True, timeout=60, check=True
    )
    said = [line.split(": ", 1)[-1] for line in out.stderr.splitlines()]
    assert said == ["thread line", "marker", "loop line"]


@given(st.text(alphabet=st.characters(max_codepoint=0x2FF)))
def test_clean_mangles_as_qmail_send_does(text: str) -> None:
    expected = "".join(
        "/" if ch == "\n" else "_" if ch < " " or ch in "%\x7f" else ch for ch in text.rstrip("\n")
    )
    assert clean(text) == expected
