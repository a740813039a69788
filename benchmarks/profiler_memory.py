"""What heapspy's own memory costs the target, against full tracing, for a 1 GiB heap.

    .venv/bin/python benchmarks/profiler_memory.py [--mib 1024] [--interpreters 3.11,3.14]
        [--rate 512KiB] [--snapshot] [--json FILE]

``benchmarks/targets/memory_target.py`` builds MIB MiB of 100-byte bytes objects (as
requested from the allocators: ``sys.getsizeof`` of each and of the list holding them),
after heapspy's agent is in place when one is attached, then reports its own memory.
Per interpreter, four runs of that target, each in a fresh process:

- ``none``: nothing attached, before the others and again after them (the two show the
  noise of the RSS figures; their mean is the baseline);
- ``sampled``: heapspy at the rate (default 512 KiB), 0.5 s interval, read after two
  samples taken wholly after the build. The shim's tables are ``totals["shim_memory"]``
  (libc memory the shim holds);
- ``exact``: heapspy at rate 1, i.e. tracemalloc with heapspy's 64 frames, with an
  interval long enough that no snapshot is taken while measuring.
  ``tracemalloc.get_tracemalloc_memory()`` is reported by the target itself.

Profiler memory, all inclusive, is the growth of the target's RSS over the unattached
runs: the shim's tables, the agent's Python objects and the modules it imports, its
thread, tracemalloc in exact mode, allocator slack. The anonymous part of it and the
growth in pymalloc's block count (``sys.getallocatedblocks``: mostly the agent's Python
objects; pymalloc's statistics in bytes are not available while hooks are installed) are
shown beside it. In exact mode heapspy also snapshots tracemalloc every interval; with
``--snapshot`` the detach's snapshot is timed and the target's peak RSS over it
(``VmHWM``) shown: that takes minutes at 1 GiB on 3.11, try ``--mib 128``.

Goal (issue 3): profiler memory <= 1 % of the traced heap at the default rate.
Prints figures; this is not a timed test. The default run takes about 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import Target, log, pick_interpreters, stream  # noqa: E402
from interpreters import Interpreter  # noqa: E402

import heapspy.channel  # noqa: E402
from heapspy.config import AttachConfig  # noqa: E402
from heapspy.session import Session  # noqa: E402
from heapspy.units import parse_size  # noqa: E402

TARGET = Path(__file__).resolve().parent / "targets" / "memory_target.py"
GOAL = 0.01
MIB = 1 << 20
EXACT_INTERVAL = 3600.0  # no snapshot while measuring; the detach takes one


def report(target: Target, session: Session | None = None, timeout: float = 600) -> dict[str, Any]:
    target.send("report\n")
    text = target.line("REPORT ", timeout, session)
    if text is None:
        raise target.failure("the target did not report")
    return dict(json.loads(text[7:]))


@dataclass
class Result:
    label: str
    mode: str  # none | sampled | exact
    seconds: float
    target: dict[str, Any]  # the target's REPORT once settled
    totals: dict[str, Any] = field(default_factory=dict)  # heapspy's totals from the agent
    heap_estimate: int | None = None
    snapshot: dict[str, Any] | None = None  # exact: the target's REPORT after the detach
    snapshot_s: float | None = None


def run_once(
    interp: Interpreter, label: str, rate: int | None, mib: float, snapshot: bool, work: Path
) -> Result:
    t0 = time.monotonic()
    wait = "wait" if rate is not None else "nowait"
    target = Target(interp.command(str(TARGET), str(mib), wait))
    try:
        if target.line("READY", 60) is None:
            raise target.failure("the target did not start")
        if rate is None:
            target.send("go\n")
            rep = report(target)
            return Result(label, "none", time.monotonic() - t0, rep)
        interval = 0.5 if rate != 1 else EXACT_INTERVAL
        config = AttachConfig(rate=rate, final_dump=False, dump_dir=work, interval=interval)
        session = Session.attach(target.proc.pid, config)
        snap = None
        snap_s = None
        try:
            target.send("go\n")  # the agent's hooks are in place once attach returned
            report(target, session)  # answered once the heap is built
            agg = session.aggregator
            if rate != 1:
                wanted = agg.intervals + 2  # two samples taken wholly after the build
                while agg.intervals < wanted:
                    stream(session, target)
            else:
                stream(session, target)
            rep = report(target, session)
            result = Result(
                label, agg.sampling.mode, 0.0, rep, dict(agg.totals), agg.heap_estimate()
            )
        finally:
            t_detach = time.monotonic()
            session.detach()
        if snapshot and rate == 1:
            # The agent snapshots tracemalloc once more at the detach, then leaves.
            deadline = time.monotonic() + 3600
            while target.threads() > 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            snap_s = time.monotonic() - t_detach
            snap = report(target)
        result.snapshot, result.snapshot_s = snap, snap_s
    finally:
        target.close()
    result.seconds = time.monotonic() - t0
    return result


def cell(value: float | None, width: int, scale: float = MIB, fmt: str = ".1f") -> str:
    """A right-aligned figure (MiB by default), or "-" when there is none."""
    return f"{'-' if value is None else format(value / scale, fmt):>{width}}"


def table(label: str, results: list[Result]) -> tuple[str, list[dict[str, Any]]]:
    bases = [r.target for r in results if r.mode == "none"]
    rss0 = sum(b["VmRSS"] for b in bases) / len(bases)
    anon0 = sum(b["RssAnon"] for b in bases) / len(bases)
    blocks0 = sum(b["blocks"] for b in bases) / len(bases)
    heap = results[0].target["heap"]
    pct = heap / 100
    lines = [
        f"\n{label}: heap {heap / MIB:.1f} MiB in {results[0].target['objects'] / 1e6:.2f}M "
        f"objects of 100 bytes; unattached RSS {rss0 / MIB:.1f} MiB",
        f"  {'run':<16}{'build s':>8}{'run s':>7}{'RSS':>8}{'dRSS':>8}{'dRSS%':>7}{'dAnon':>8}"
        f"{'shim':>8}{'shim%':>7}{'blocks+':>9}{'tracemalloc':>12}{'tm%':>7}",
    ]
    figures = []
    for r in results:
        t = r.target
        d_rss = t["VmRSS"] - rss0
        shim = r.totals.get("shim_memory")
        tm = t.get("tracemalloc_memory")
        lines.append(
            f"  {r.label:<16}{t['build_s']:>8.1f}{r.seconds:>7.1f}{cell(t['VmRSS'], 8)}"
            f"{cell(d_rss, 8)}{cell(d_rss, 7, pct, '.2f')}{cell(t['RssAnon'] - anon0, 8)}"
            f"{cell(shim, 8, MIB, '.2f')}{cell(shim, 7, pct, '.3f')}"
            f"{cell(t['blocks'] - blocks0, 9, 1, '+.0f')}{cell(tm, 12)}{cell(tm, 7, pct, '.1f')}"
        )
        fig: dict[str, Any] = {
            "run": r.label,
            "mode": r.mode,
            "heap": heap,
            "build_s": t["build_s"],
            "seconds": r.seconds,
            "rss": t["VmRSS"],
            "rss_growth": d_rss,
            "anon_growth": t["RssAnon"] - anon0,
            "blocks_growth": t["blocks"] - blocks0,
            "shim_memory": shim,
            "tracemalloc_memory": tm,
            "heap_estimate": r.heap_estimate,
            "live_samples": r.totals.get("live_samples"),
            "stacks": r.totals.get("stacks"),
        }
        if r.snapshot is not None:
            fig["snapshot_peak_rss"] = r.snapshot["VmHWM"]
            fig["snapshot_s"] = r.snapshot_s
        figures.append(fig)
    lines.append(
        "  (MiB; % of the heap; dRSS/dAnon: growth of RSS/anonymous RSS over the unattached "
        "runs; blocks+: pymalloc blocks over them)"
    )
    for r, fig in zip(results, figures):
        if r.mode == "sampled" and r.heap_estimate is not None:
            lines.append(
                f"  sampled: {fig['live_samples']} live samples in {fig['stacks']} stacks; "
                f"heapspy's heap estimate {r.heap_estimate / MIB:.1f} MiB "
                f"({(r.heap_estimate / heap - 1) * 100:+.1f}% of the heap)"
            )
        if r.snapshot is not None:
            peak = r.snapshot["VmHWM"]
            lines.append(
                f"  exact: the snapshot at the detach took {r.snapshot_s:.1f} s; peak RSS "
                f"{peak / MIB:.1f} MiB = unattached + {(peak - rss0) / MIB:.1f} MiB "
                f"({(peak - rss0) / heap * 100:.1f}% of the heap)"
            )
    return "\n".join(lines), figures


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(__doc__ or "").split("\n\n", 2)[-1],
    )
    parser.add_argument("--mib", type=float, default=1024, help="heap to build, MiB")
    parser.add_argument("--interpreters", default="3.11,3.14", help="labels or versions")
    parser.add_argument("--rate", default="512KiB", help="sampled mode's rate, bytes")
    parser.add_argument(
        "--snapshot",
        action="store_true",
        help="also measure an exact-mode snapshot (minutes at 1 GiB: try --mib 128)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    args.rate = parse_size(args.rate, "rate")
    args.interpreters = [i.strip() for i in args.interpreters.split(",") if i.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="heapspy-memory-"))
    os.environ.setdefault("HEAPSPY_RUNTIME_DIR", str(work / "run"))
    # The exact build and the detach snapshot keep the agent silent for a while.
    heapspy.channel.AGENT_TIMEOUT = max(heapspy.channel.AGENT_TIMEOUT, 120.0)
    print(f"heapspy profiler memory: {args.mib:g} MiB heap, {os.cpu_count()} CPUs", flush=True)
    t_all = time.monotonic()
    out = []
    verdicts = []
    rate_text = f"{args.rate // 1024} KiB" if args.rate >= 1024 else f"{args.rate} B"
    for interp in pick_interpreters(args.interpreters):
        plan: list[tuple[str, int | None]] = [
            ("none", None),
            (f"sampled {rate_text}", args.rate),
            ("exact (rate 1)", 1),
            ("none", None),
        ]
        results = []
        for label, rate in plan:
            log(f"{interp.label}: {label}")
            results.append(run_once(interp, label, rate, args.mib, args.snapshot, work))
        text, figures = table(interp.label, results)
        print(text, flush=True)
        out.append({"interpreter": interp.label, "runs": figures})
        for fig in figures:
            if fig["mode"] == "sampled":
                rss = fig["rss_growth"] / fig["heap"]
                shim = (fig["shim_memory"] or 0) / fig["heap"]
                verdicts.append(
                    f"  {'ok  ' if rss <= GOAL else 'MISS'} {interp.label:<14}RSS growth "
                    f"{rss * 100:.2f}% of the heap (the shim's tables alone {shim * 100:.3f}%)"
                )
            elif fig["mode"] == "exact" and fig["tracemalloc_memory"] is not None:
                verdicts.append(
                    f"       {interp.label:<14}(full tracing: tracemalloc alone "
                    f"{fig['tracemalloc_memory'] / fig['heap'] * 100:.1f}%, RSS growth "
                    f"{fig['rss_growth'] / fig['heap'] * 100:.1f}% of the heap)"
                )
    print(f"\nGoal: profiler memory <= 1 % of the traced heap at {rate_text}:")
    print("\n".join(verdicts))
    print(f"\ntotal time {time.monotonic() - t_all:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
