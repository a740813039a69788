#!/usr/bin/env python3
"""Memory the daemon costs per watched worker: proportional (PSS) and private (USS) set
sizes of the daemon and of every process it runs (session processes in older versions,
attach helpers while attaching), for each fleet size given.

    .venv/bin/python benchmarks/daemon_memory.py [--workers 8 32 64] [--python 3.11]
        [--settle 10] [--census] [--tree DIR]

Issue 12's goals: <= 2 MiB PSS per watched worker, <= 40 MiB for the daemon itself.
``--tree DIR`` measures another checkout's daemon (see daemon_fleet.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import psutil
from daemon_fleet import fleet, load
from harness import ROOT, log, pick_interpreters


def mib(n: float) -> str:
    return f"{n / 2**20:6.1f} MiB"


def memory(proc: psutil.Process) -> tuple[int, int]:
    try:
        m = proc.memory_full_info()
    except psutil.Error:  # an attach helper that has just exited
        return 0, 0
    return m.uss, m.pss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[8, 32, 64])
    ap.add_argument("--python", default="3.11", help="the workers' interpreter")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds attached before measuring")
    ap.add_argument("--census", action="store_true", help="with the census at attach")
    ap.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose daemon runs")
    args = ap.parse_args()
    [interp] = pick_interpreters([args.python]) or [None]
    if interp is None:
        raise SystemExit(1)
    print(f"daemon of {args.tree}; workers: Python {interp.version_text}; census {args.census}")
    print(f"{'workers':>8}{'daemon PSS':>13}{'daemon USS':>13}{'others':>7}{'others PSS':>13}"
          f"{'total PSS':>13}{'per worker':>13}{'attached in':>13}  load")  # fmt: skip
    for n in args.workers:
        with fleet(list(interp.argv), n, args.tree, census=args.census) as f:
            time.sleep(args.settle)
            d_uss, d_pss = memory(f.daemon)
            others = [p for p in f.processes() if p.pid != f.daemon.pid]
            o_pss = sum(memory(p)[1] for p in others)
            total = d_pss + o_pss
            print(f"{n:>8}{mib(d_pss):>13}{mib(d_uss):>13}{len(others):>7}{mib(o_pss):>13}"
                  f"{mib(total):>13}{mib(total / n):>13}{f.attach_seconds:>11.1f} s  {load()}",
                  flush=True)  # fmt: skip
    log("done")


if __name__ == "__main__":
    main()
