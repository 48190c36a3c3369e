"""Memory and CPU of a process tree, read from /proc (Linux only)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """pid and all its descendants alive right now."""
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for c in children:
        out.extend(tree(int(c)))
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_mb(pids: list[int]) -> float:
    """Sum of VmRSS: pages shared between processes are counted once per process."""
    return sum(_status_kb(p, "VmRSS:") for p in pids) / 1024


def pss_mb(pids: list[int]) -> float:
    """Sum of PSS: each shared page divided among the processes sharing it."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total / 1024


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user+system) of these processes and their reaped children."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        f = stat.rsplit(")", 1)[1].split()
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / TICK


class CpuMeter:
    """CPU of a tree between start() and stop(), counting processes born in between.

    A process that exits in between is counted through its parent's
    cutime/cstime (both MTAs' masters wait for their children).
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self.seen: dict[int, float] = {}
        self.start_total = 0.0

    def _per_pid(self) -> dict[int, float]:
        return {p: cpu_s([p]) for p in tree(self.root)}

    def start(self) -> None:
        self.seen = self._per_pid()
        self.names = {p: process_name(p) for p in self.seen}

    def stop(self) -> float:
        # a process gone since start() now sits in its parent's cutime with
        # its whole life, so its earlier share is subtracted like the others
        return sum(self.by_name().values())

    def by_name(self) -> dict[str, float]:
        """CPU seconds since start() per process name (same-named processes summed)."""
        now = self._per_pid()
        out: dict[str, float] = {}
        for pid in now.keys() | self.seen.keys():
            name = self.names.get(pid) or process_name(pid)
            out[name] = out.get(name, 0.0) + now.get(pid, 0.0) - self.seen.get(pid, 0.0)
        return out


def process_name(pid: int) -> str:
    """pyqmail's component module (pyqmail.send...), else the command's name (Postfix's
    smtpd, cleanup, qmgr...). lspawn's delivery workers carry lspawn's name."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "gone"
    for arg in reversed(argv):
        if arg.startswith(b"pyqmail.") and arg != b"pyqmail.unix.notls":
            return arg.decode()
        if arg.endswith(b"logger.py"):
            return "pyqmail log"
    if any(a.endswith(b"/pyqmail") for a in argv[:2]):
        return "pyqmail supervisor"
    return comm


class PeakSampler(threading.Thread):
    """Samples RSS and PSS of a tree every interval; keeps the peaks."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.peak_rss = 0.0
        self.peak_pss = 0.0
        self._halt = threading.Event()

    def _sample(self) -> None:
        pids = tree(self.root)
        self.peak_rss = max(self.peak_rss, rss_mb(pids))
        self.peak_pss = max(self.peak_pss, pss_mb(pids))

    def run(self) -> None:
        # a sample at once and at the end: a run shorter than the interval
        # must not report a peak of 0
        self._sample()
        while not self._halt.wait(self.interval):
            self._sample()

    def finish(self) -> tuple[float, float]:
        self._halt.set()
        self.join(5)
        self._sample()
        return self.peak_rss, self.peak_pss
