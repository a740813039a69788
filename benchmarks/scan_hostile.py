#!/usr/bin/env python3
"""How long one daemon scan of /proc takes with hostile command lines on the host.

    .venv/bin/python benchmarks/scan_hostile.py [--processes 1000] [--hostile 50]

Starts idle processes until the host has PROCESSES, HOSTILE of them with a ~1.9 MiB command line of
'celery celery ...' (the worst text for the example config's 'celery .* worker'), then
times ``scan()`` with systemd/heapspy.toml's watches: the median of 5 scans over every
process on the host, and, for comparison, Python's ``re`` on one hostile command line
(its first 50,000 characters, and cut at the cap) as the daemon ran it before RE2 and the cap.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import time
from pathlib import Path

import psutil
from harness import log

from heapspy.daemon.config import load_config
from heapspy.daemon.discover import scan
from heapspy.daemon.match import CMDLINE_CAP

EXAMPLE = Path(__file__).resolve().parent.parent / "systemd" / "heapspy.toml"
ARG = ("celery " * (120_000 // 7)).strip()  # the kernel takes 128 KiB per argument


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=1000)
    parser.add_argument("--hostile", type=int, default=50)
    args = parser.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(args.processes - len(psutil.pids())):
            if i < args.hostile:
                # dash waits for its sleep (one more process) and keeps its long command line
                argv = ["sh", "-c", "sleep 600; :", "sh", *[ARG] * 16]
            else:
                argv = ["sleep", "600"]
            procs.append(subprocess.Popen(argv))
        watches = load_config(EXAMPLE).watches
        scan(watches)  # warm: imports, compiled regexes
        times = []
        for _ in range(5):
            start = time.perf_counter()
            scan(watches)
            times.append(time.perf_counter() - start)
        total = len(psutil.pids())
        median = statistics.median(times)
        log(
            f"scan of {total} processes ({args.hostile} with 1.9 MiB command lines): "
            f"median {median * 1000:.1f} ms, max {max(times) * 1000:.1f} ms "
            f"({median / total * 1e6:.0f} us per process; cap {CMDLINE_CAP} bytes, RE2)"
        )
        text = " ".join(["sh", *[ARG] * 16])
        for label, sample in (
            ("whole", text[:50_000]),
            (f"cut at {CMDLINE_CAP}", text[:CMDLINE_CAP]),
        ):
            start = time.perf_counter()
            re.search("celery .* worker", sample)
            log(
                f"Python re, 'celery .* worker', one command line {label} "
                f"({len(sample)} chars): {(time.perf_counter() - start) * 1000:.1f} ms"
            )
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


if __name__ == "__main__":
    main()
