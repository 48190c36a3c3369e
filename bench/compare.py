"""pyqmail side by side with Postfix: the benchmark of issue #11 (`make bench`).

Each repetition starts a fresh pyqmail, runs every workload, stops it, then
does the same with a private Postfix instance (A B A B ...). Workloads:
  (a) SMTP accept -> relay to the loopback sink, N x 4 KB, 1 rcpt, C = 1, 10, 50
      (and smtp-source as the client at C = 10)
  (b) fan-out: one message to R recipients at the sink's domain
  (c) local delivery: M messages to one Maildir at C = 10
  (d) idle connections held open while one client sends: its transaction time
  (e) memory: RSS (and PSS) of the whole process tree, idle and peak in (a) C=50
  (f) CPU per message, whole process tree, during (a)
Every workload is counted at its destination: nothing lost, nothing doubled.
Without root or Postfix, pyqmail runs alone and the report says so.

    .venv/bin/python bench/compare.py [--quick] [--reps 3] [--only pyqmail]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from load import (
    SENDER,
    idle_then_one,
    load,
    message,
    sink_reset,
    sink_stats,
    smtp_source,
)
from mtas import Mta, Postfix, Pyqmail, postfix_usable
from procs import CpuMeter, PeakSampler, pss_mb, rss_mb, tree

RESULTS = Path(__file__).parent / "results"
SIZE = 4096
WAIT_S = 300.0


@dataclass(frozen=True)
class Plan:
    a_msgs: int
    a_msgs_c1: int  # fewer at C=1 (and for smtp-source): the full run must fit 10 minutes
    a_conc: tuple[int, ...]
    b_rcpts: int
    c_msgs: int
    d_idle: int
    reps: int


FULL = Plan(
    a_msgs=5000, a_msgs_c1=2000, a_conc=(1, 10, 50), b_rcpts=10000, c_msgs=2000, d_idle=500, reps=3
)
QUICK = Plan(
    a_msgs=200, a_msgs_c1=200, a_conc=(1, 10, 50), b_rcpts=1000, c_msgs=200, d_idle=50, reps=1
)
IDLE_CAP_S = 10.0

Run = dict[str, float]


class Lost(Exception):
    pass


def wait_until(pred: Callable[[], bool], what: str) -> float:
    t0 = time.perf_counter()
    while not pred():
        if time.perf_counter() - t0 > WAIT_S:
            raise Lost(f"timed out waiting for {what}")
        time.sleep(0.01)
    return time.perf_counter()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] * 1000


def start_sink() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "sink.py")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("port "):
        proc.kill()
        raise SystemExit("sink did not start")
    return proc, int(line.split()[1])


def ceiling(sink: int, plan: Plan) -> Run:
    """What the clients and the sink manage with no MTA in between."""
    out: Run = {}
    n = max(plan.a_msgs, 1000)
    for conc in (10, 50):
        sink_reset(sink)
        r = load(sink, n, conc, SIZE, "x@example.net", f"ceil{conc}")
        out[f"python client -> sink, C={conc} (msg/s)"] = r.accepted / r.elapsed
    sink_reset(sink)
    took = smtp_source(sink, n, 10, SIZE, "x@example.net")
    out["smtp-source -> sink, C=10 (msg/s)"] = n / took
    return out


def relay(mta: Mta, sink: int, n: int, conc: int, run: Run, sample: bool) -> None:
    """(a) at one concurrency, with (e) peak memory and (f) CPU."""
    sink_reset(sink)
    cpu = CpuMeter(mta.root_pid)
    sampler = PeakSampler(mta.root_pid)
    cpu.start()
    sampler.start()
    t0 = time.perf_counter()
    r = load(mta.smtp_port, n, conc, SIZE, "rcpt@example.net", f"a{conc}")
    t_end = wait_until(lambda: sink_stats(sink).messages >= r.accepted, "(a) at the sink")
    per_name = cpu.by_name()
    cpu_s = sum(per_name.values())
    peak_rss, peak_pss = sampler.finish()
    time.sleep(0.5)  # anything doubled would show up now
    s = sink_stats(sink)
    if s.distinct != r.accepted or s.messages != r.accepted:
        raise Lost(f"(a) C={conc}: accepted {r.accepted}, sink got {s}")
    run[f"a C={conc} accept (msg/s)"] = r.accepted / r.elapsed
    run[f"a C={conc} latency p50 (ms)"] = pct(r.latencies, 0.5)
    run[f"a C={conc} latency p99 (ms)"] = pct(r.latencies, 0.99)
    run[f"a C={conc} end to end (msg/s)"] = r.accepted / (t_end - t0)
    run[f"a C={conc} CPU per message (ms)"] = cpu_s * 1000 / r.accepted
    if conc == 10:
        for name, secs in per_name.items():
            run[f"{BY_PROCESS}{name}"] = secs * 1000 / r.accepted
    if sample:
        run["e peak RSS in (a) C=50 (MB)"] = peak_rss
        run["e peak PSS in (a) C=50 (MB)"] = peak_pss


def relay_smtp_source(mta: Mta, sink: int, n: int, run: Run) -> None:
    sink_reset(sink)
    t0 = time.perf_counter()
    took = smtp_source(mta.smtp_port, n, 10, SIZE, "rcpt@example.net")
    t_end = wait_until(lambda: sink_stats(sink).messages >= n, "smtp-source mail at the sink")
    time.sleep(0.5)
    if (got := sink_stats(sink).messages) != n:
        raise Lost(f"(a) smtp-source: sent {n}, sink got {got}")
    run["a smtp-source C=10 accept (msg/s)"] = n / took
    run["a smtp-source C=10 end to end (msg/s)"] = n / (t_end - t0)


def fanout(mta: Mta, sink: int, rcpts: int, run: Run) -> None:
    sink_reset(sink)
    addrs = [f"f{i}@example.net" for i in range(rcpts)]
    t0 = time.perf_counter()
    mta.inject(SENDER, addrs, message(SIZE, "fanout"))
    t_end = wait_until(lambda: sink_stats(sink).recipients >= rcpts, "(b) at the sink")
    time.sleep(0.5)
    if (got := sink_stats(sink).recipients) != rcpts:
        raise Lost(f"(b): {rcpts} recipients, sink got {got}")
    run["b fan-out (recipients/s)"] = rcpts / (t_end - t0)


def local(mta: Mta, n: int, run: Run) -> None:
    mta.clear_maildir()
    t0 = time.perf_counter()
    r = load(mta.smtp_port, n, 10, SIZE, mta.local_rcpt(), "c")
    t_end = wait_until(lambda: mta.local_count() >= r.accepted, "(c) in the Maildir")
    time.sleep(0.5)
    ids = mta.local_ids()
    if len(ids) != r.accepted or len(set(ids)) != r.accepted:
        raise Lost(f"(c): accepted {r.accepted}, Maildir has {len(ids)} ({len(set(ids))} distinct)")
    run["c local Maildir C=10 (msg/s)"] = r.accepted / (t_end - t0)


def idle(mta: Mta, n: int, run: Run) -> None:
    opened, took = idle_then_one(mta.smtp_port, n, "rcpt@example.net", SIZE, IDLE_CAP_S)
    run[f"d idle connections opened (of {n})"] = opened
    # a transaction that did not finish within the cap is reported as the cap
    run[f"d transaction with {n} idle (s, cap {IDLE_CAP_S:.0f})"] = (
        took if took is not None else IDLE_CAP_S
    )


def one_rep(mta: Mta, sink: int, plan: Plan) -> Run:
    run: Run = {}
    mta.start()
    try:
        time.sleep(1.0)
        pids = tree(mta.root_pid)
        run["e idle RSS (MB)"] = rss_mb(pids)
        run["e idle PSS (MB)"] = pss_mb(pids)
        for conc in plan.a_conc:
            n = plan.a_msgs_c1 if conc == 1 else plan.a_msgs
            relay(mta, sink, n, conc, run, sample=conc == max(plan.a_conc))
        relay_smtp_source(mta, sink, plan.a_msgs_c1, run)
        fanout(mta, sink, plan.b_rcpts, run)
        local(mta, plan.c_msgs, run)
        idle(mta, plan.d_idle, run)
    except Lost:
        mta.post_mortem(RESULTS / f"lost-{mta.name}")
        raise
    finally:
        mta.stop()
        mta.cleanup()
    return run


LOWER_IS_BETTER = ("latency", "RSS", "PSS", "CPU", "transaction with")


BY_PROCESS = "f C=10 CPU ms/msg: "  # rows of the per-process table, not the main one


def by_process(summary: dict[str, dict[str, dict[str, float]]], name: str) -> list[str]:
    rows = sorted(
        (
            (k.removeprefix(BY_PROCESS), per[name])
            for k, per in summary.items()
            if k.startswith(BY_PROCESS) and name in per
        ),
        key=lambda kv: -kv[1]["median"],
    )
    return [
        f"| {proc} | {fmt(v['median'])} ({fmt(v['min'])} - {fmt(v['max'])}) |"
        for proc, v in rows
        if v["median"] >= 0.005
    ]


def summarize(runs: dict[str, list[Run]]) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, rs in runs.items():
        for key in rs[0]:
            vals = [r[key] for r in rs if key in r]
            out.setdefault(key, {})[name] = {
                "median": statistics.median(vals),
                "min": min(vals),
                "max": max(vals),
            }
    return out


def fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def table(summary: dict[str, dict[str, dict[str, float]]], names: list[str]) -> list[str]:
    head = "| metric | " + " | ".join(f"{n} median (min - max)" for n in names)
    lines = [head + (" | ratio pyqmail/Postfix |" if len(names) > 1 else " |")]
    lines.append("|---" * (len(names) + 1 + (len(names) > 1)) + "|")
    for key, per in summary.items():
        cells = [
            f"{fmt(per[n]['median'])} ({fmt(per[n]['min'])} - {fmt(per[n]['max'])})"
            if n in per
            else "-"
            for n in names
        ]
        row = f"| {key} | " + " | ".join(cells)
        if len(names) > 1:
            a, b = per.get("pyqmail"), per.get("postfix")
            ratio = f"{a['median'] / b['median']:.2f}" if a and b and b["median"] else "-"
            row += f" | {ratio}"
        lines.append(row + " |")
    return lines


def reference_ms() -> float:
    """CPU time of a fixed pure-Python loop: how fast this machine is right now.

    On a shared host the same code costs more CPU time while neighbours are
    busy (the time the host takes away is still counted as ours); this
    puts the absolute figures of a run, CPU per message above all, in scale.
    """
    t0 = time.process_time()
    total = 0
    for i in range(3_000_000):
        total += i & 7
    return (time.process_time() - t0) * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small counts, one repetition")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--only", choices=("pyqmail", "postfix"))
    args = ap.parse_args()
    plan = QUICK if args.quick else FULL
    if args.reps:
        plan = Plan(**{**plan.__dict__, "reps": args.reps})
    why_not = postfix_usable()
    kinds: list[type[Mta]] = [Pyqmail] if why_not else [Pyqmail, Postfix]
    if args.only:
        kinds = [k for k in kinds if k.name == args.only]
    started = time.time()
    sink_proc, sink = start_sink()
    runs: dict[str, list[Run]] = {k.name: [] for k in kinds}
    references: list[float] = []
    try:
        ceil = ceiling(sink, plan)
        for rep in range(plan.reps):
            for kind in kinds:
                print(f"rep {rep + 1}/{plan.reps}: {kind.name}", file=sys.stderr, flush=True)
                references.append(reference_ms())
                runs[kind.name].append(one_rep(kind(sink), sink, plan))
    finally:
        sink_proc.terminate()
        sink_proc.wait(10)
    took = time.time() - started
    names = [k.name for k in kinds]
    summary = summarize(runs)
    mode = "--quick" if args.quick else "full"
    cmd = (
        "bench/compare.py"
        + (" --quick" if args.quick else "")
        + (f" --reps {args.reps}" if args.reps else "")
    )
    alone = f" Postfix not run: {why_not}." if why_not else ""
    lines = [
        f"`.venv/bin/python {cmd}` ({mode}: {plan.reps} repetition(s), interleaved "
        f"{' '.join(names)}; {plan.a_msgs} msgs x 4 KB for (a) at C=10 and 50, "
        f"{plan.a_msgs_c1} at C=1 and with smtp-source, {plan.b_rcpts} rcpts for (b), "
        f"{plan.c_msgs} msgs for (c), {plan.d_idle} idle connections for (d); fsync on in both; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; "
        f"took {took:.0f} s).{alone}",
        "",
        f"Machine speed: a fixed pure-Python loop ({reference_ms.__name__} in "
        f"bench/compare.py) took {fmt(statistics.median(references))} ms of CPU "
        f"({fmt(min(references))} - {fmt(max(references))}) before the repetitions; "
        "on a busy shared host everything, CPU per message included, costs more.",
        "",
        *table({k: v for k, v in summary.items() if not k.startswith(BY_PROCESS)}, names),
        "",
        "CPU per message at (a) C=10 by process (ms, median (min - max)); lspawn's "
        "delivery workers are counted with lspawn, children that exited with their parent:",
        "",
        *(
            line
            for n in names
            for line in (
                f"| {n} process | ms/msg |",
                "|---|---|",
                *by_process(summary, n),
                "",
            )
        ),
        "Client and sink ceiling (no MTA in between; the load must stay below these):",
        "",
        *(f"- {k}: {fmt(v)}" for k, v in ceil.items()),
        "",
        "Lower is better for latency, RSS, PSS, CPU and transaction time; higher for the rest. "
        "RSS counts pages shared between processes once per process; PSS divides them.",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compare.md").write_text(text + "\n")
    (RESULTS / "compare.json").write_text(
        json.dumps(
            {
                "command": cmd,
                "plan": plan.__dict__,
                "postfix": why_not or "run",
                "machine": platform.platform(),
                "ceiling": ceil,
                "reference_ms": references,
                "runs": runs,
                "summary": summary,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
