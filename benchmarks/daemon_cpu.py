#!/usr/bin/env python3
"""CPU the daemon costs for idle-ish workers at the default interval: the CPU time of
the daemon and of every process it runs, over a window, as a share of one core.

    .venv/bin/python benchmarks/daemon_cpu.py [--workers 64] [--window 60] [--settle 10]
        [--python 3.11] [--tree DIR] [--scan-interval 2s]

Issue 12's goal: <= 1 % of one core for 64 idle-ish workers. The workers wake 100
times a second and allocate a little (daemon_fleet.WORKER); the sessions run with the
watch's defaults (1 s interval, 512 KiB rate). ``--tree DIR`` measures another checkout.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import psutil
from daemon_fleet import fleet, load
from harness import ROOT, log, pick_interpreters


def _seconds(p: psutil.Process) -> float | None:
    try:
        t = p.cpu_times()
    except psutil.Error:
        return None
    return float(t.user + t.system)


def cpu_seconds(procs: list[psutil.Process]) -> dict[int, float]:
    found = {p.pid: _seconds(p) for p in procs}
    return {pid: t for pid, t in found.items() if t is not None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[64])
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--settle", type=float, default=10.0)
    ap.add_argument("--python", default="3.11")
    ap.add_argument("--tree", type=Path, default=ROOT)
    ap.add_argument("--scan-interval", default="2s", help="the daemon's (2s: its default)")
    args = ap.parse_args()
    [interp] = pick_interpreters([args.python]) or [None]
    if interp is None:
        raise SystemExit(1)
    print(f"daemon of {args.tree}; workers: Python {interp.version_text}")
    for n in args.workers:
        with fleet(list(interp.argv), n, args.tree, scan_interval=args.scan_interval) as f:
            time.sleep(args.settle)
            procs = f.processes()
            before, load_before = cpu_seconds(procs), load()
            t0 = time.monotonic()
            time.sleep(args.window)
            after = cpu_seconds(procs)
            wall = time.monotonic() - t0
            used = sum(after[p] - before[p] for p in after if p in before)
            daemon = after.get(f.daemon.pid, 0.0) - before.get(f.daemon.pid, 0.0)
            print(
                f"{n} workers: {100 * used / wall:.2f} % of one core over {wall:.0f} s "
                f"(the daemon process {100 * daemon / wall:.2f} %, {len(procs)} processes; "
                f"all attached {f.attach_seconds:.1f} s after the daemon started); "
                f"{load_before} before, {load()} after",
                flush=True,
            )
    log("done")


if __name__ == "__main__":
    main()
