#!/usr/bin/env python3
"""What the RSS breakdown costs: the target's time inside the agent's ``memstats`` (it
holds the GIL: pymalloc's walk of its arenas, glibc's mallinfo2 and malloc_info) and
heapspy's own time reading and classifying ``/proc/PID/smaps`` (issue goal: the full
breakdown at dump time <= 20 ms).

    .venv/bin/python benchmarks/rss_breakdown_cost.py [--objects 10000000] [--rounds 20]
        [--python 3.11]

The target keeps ``--objects`` small tuples (about 64 B each: 10 M is ~0.7 GiB of
pymalloc arenas) and 20,000 malloc'd blocks through ctypes, then waits.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from harness import log, pick_interpreters

from heapspy.config import AttachConfig
from heapspy.rss import detect_allocator, read_maps
from heapspy.session import Session

TARGET = """
import ctypes, os, sys, time
n = int(sys.argv[1])
keep = [(i, i) for i in range(n)]
libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p
blocks = [libc.malloc(700) for _ in range(20000)]
print("READY", os.getpid(), flush=True)
while True:
    time.sleep(0.01)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--python", default="3.11")
    args = parser.parse_args()
    interp = pick_interpreters([args.python])[0]
    target = subprocess.Popen(
        [*interp.argv, "-c", TARGET, str(args.objects)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert target.stdout is not None
        target.stdout.readline()
        session = Session.attach(target.pid, AttachConfig(final_dump=False))
        try:
            in_target, outside = [], []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                maps, _sps, _threads = read_maps(target.pid)
                allocator = detect_allocator(maps)
                outside.append(time.perf_counter() - t0)
                reply = session._agent_call("memstats", glibc=allocator == "glibc")
                in_target.append(float(reply["seconds"]))
            rss = sum(m.rss for m in maps)
        finally:
            session.detach()
        log(
            f"{args.objects:,} objects, RSS {rss / 2**20:.0f} MiB, {len(maps)} mappings: "
            f"in the target (GIL held) median {statistics.median(in_target) * 1000:.2f} ms "
            f"(max {max(in_target) * 1000:.2f}); heapspy's smaps read "
            f"{statistics.median(outside) * 1000:.2f} ms; n={args.rounds}"
        )
    finally:
        target.kill()
        target.wait()


if __name__ == "__main__":
    main()
