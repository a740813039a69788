#!/usr/bin/env python3
"""Memory the daemon costs per watched worker: private (USS) and proportional (PSS) set
sizes of the daemon and of each of its session processes, next to one hand-started
``heapspy attach`` (a fresh interpreter that imports everything itself).

    .venv/bin/python benchmarks/daemon_memory.py [--workers 8] [--python 3.11] [--settle 5]

The workers are plain loops that allocate; the figure that matters for a host running
many of them is the USS per session process (what each extra worker adds) and the
daemon's own.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
from harness import ROOT, log, pick_interpreters

WORKER = (
    "import sys, time\nwhile True:\n    x = [str(i) for i in range(1000)]\n"
    "    time.sleep(0.001)\n"
)


def mib(n: int) -> str:
    return f"{n / 2**20:6.1f} MiB"


def memory(proc: psutil.Process) -> tuple[int, int, int]:
    m = proc.memory_full_info()
    return m.uss, m.pss, m.rss


def wait_sessions(daemon: psutil.Process, n: int, timeout: float = 60.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [k for k in daemon.children() if k.name().startswith("heapspy:")]
        if len(kids) >= n:
            return kids
        time.sleep(0.2)
    raise SystemExit(f"only {len(daemon.children())} of {n} sessions started")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--python", default="3.11", help="the workers' interpreter")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds attached before measuring")
    args = ap.parse_args()
    [interp] = pick_interpreters([args.python]) or [None]
    if interp is None:
        raise SystemExit(1)
    tag = f"hs-mem-{uuid.uuid4().hex[:8]}"
    workers = [
        subprocess.Popen([*interp.argv, "-c", WORKER, tag]) for _ in range(args.workers)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "heapspy.toml"
        config.write_text(
            '[daemon]\nscan_interval = "0.5s"\nsettle = "0.5s"\n'
            f'[[watch]]\nname = "w"\ncmdline = "{tag}"\ndump_dir = "{tmp}/dumps"\n'
            "final_dump = false\n"
        )
        daemon = subprocess.Popen(
            [sys.executable, "-m", "heapspy", "daemon", "--config", str(config)],
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )
        by_hand = None
        try:
            kids = wait_sessions(psutil.Process(daemon.pid), args.workers)
            extra = subprocess.Popen([*interp.argv, "-c", WORKER, "by-hand"])
            time.sleep(1.0)
            by_hand = subprocess.Popen(
                [sys.executable, "-m", "heapspy", "attach", str(extra.pid), "--no-final-dump",
                 "--quiet", "--dump-dir", f"{tmp}/dumps"],
                cwd=ROOT, stdout=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(args.settle)
            d_uss, d_pss, d_rss = memory(psutil.Process(daemon.pid))
            rows = [memory(k) for k in kids]
            h_uss, h_pss, h_rss = memory(psutil.Process(by_hand.pid))
            n = len(rows)
            uss = sum(r[0] for r in rows) / n
            pss = sum(r[1] for r in rows) / n
            rss = sum(r[2] for r in rows) / n
            print(f"workers: {n} x Python {interp.version_text}")
            print(f"{'':28}{'USS':>11}{'PSS':>11}{'RSS':>11}")
            print(f"{'daemon':28}{mib(d_uss):>11}{mib(d_pss):>11}{mib(d_rss):>11}")
            print(f"{'session process (mean)':28}{mib(int(uss)):>11}{mib(int(pss)):>11}"
                  f"{mib(int(rss)):>11}")  # fmt: skip
            print(f"{'heapspy attach by hand':28}{mib(h_uss):>11}{mib(h_pss):>11}{mib(h_rss):>11}")
            total = d_pss + sum(r[1] for r in rows)
            print(f"total PSS for {n} workers: {mib(total)} ({mib(int(total / n))} per worker)")
            extra.kill()
        finally:
            if by_hand is not None:
                by_hand.terminate()
                by_hand.wait()
            daemon.terminate()
            daemon.wait(timeout=60)
            for w in workers:
                w.kill()
                w.wait()
    log("done")


if __name__ == "__main__":
    main()
