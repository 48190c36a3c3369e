"""This tree's pyqmail against another revision's, interleaved: what a change bought.

On a shared host the same code costs more or less CPU from one minute to
the next, so a figure from another day says little about a change; this
runs both versions back to back, A B A B, on workload (a) at C=10 (and (c),
local delivery), and prints medians side by side.

    .venv/bin/python bench/ab.py --base 7457557 [--reps 3] [--msgs 4000]

The base revision's src/ is exported with `git archive` into a temporary
directory and run from this tree's venv, ahead of it on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare import Run, local, reference_ms, relay, start_sink
from mtas import Pyqmail

ROOT = Path(__file__).resolve().parent.parent
KEYS = (
    "a C=10 end to end (msg/s)",
    "a C=10 CPU per message (ms)",
    "c local Maildir C=10 (msg/s)",
)


def export(rev: str, into: Path) -> None:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


def one(src: Path | None, sink: int, msgs: int) -> Run:
    saved = os.environ.get("PYTHONPATH")
    if src is not None:
        os.environ["PYTHONPATH"] = str(src)
    try:
        mta = Pyqmail(sink)
        mta.start()
        try:
            time.sleep(1.0)
            run: Run = {}
            relay(mta, sink, msgs, 10, run, sample=False)
            local(mta, msgs // 2, run)
            return run
        finally:
            mta.stop()
            mta.cleanup()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the revision to compare against")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--msgs", type=int, default=4000)
    args = ap.parse_args()
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    sink_proc, sink = start_sink()
    runs: dict[str, list[Run]] = {args.base: [], head: []}
    refs: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix="pyqmail-ab-") as tmp:
            export(args.base, Path(tmp))
            for rep in range(args.reps):
                for name, src in ((args.base, Path(tmp) / "src"), (head, None)):
                    print(f"rep {rep + 1}/{args.reps}: {name}", file=sys.stderr, flush=True)
                    refs.append(reference_ms())
                    runs[name].append(one(src, sink, args.msgs))
    finally:
        sink_proc.terminate()
        sink_proc.wait(10)
    print(
        f"`.venv/bin/python bench/ab.py --base {args.base} --reps {args.reps} "
        f"--msgs {args.msgs}` ({args.msgs} msgs at (a) C=10, {args.msgs // 2} at (c); "
        f"machine reference {statistics.median(refs):.0f} ms, "
        f"{min(refs):.0f} - {max(refs):.0f})\n"
    )
    print(f"| metric | {args.base} | {head} (this tree) | ratio |")
    print("|---|---|---|---|")
    for key in KEYS:
        a = statistics.median(r[key] for r in runs[args.base])
        b = statistics.median(r[key] for r in runs[head])
        print(f"| {key} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
