"""Target for benchmarks/profiler_memory.py: a heap of small objects, and its own figures.

    python memory_target.py MIB wait|nowait

Prints ``READY``; with ``wait`` it waits until heapspy's agent thread has appeared; then
it waits for a ``go`` line on stdin, builds MIB MiB of 100-byte bytes objects (counted as
requested: ``sys.getsizeof`` of each and of the list holding them), and answers each
``report`` line on stdin with ``REPORT {json}``: the heap, its own memory from
/proc/self/status, ``sys.getallocatedblocks()``, and tracemalloc's own memory when
tracing is on. Exits when stdin closes.
"""

import json
import sys
import threading
import time
import tracemalloc

MIB = 1 << 20
OBJECT = 100  # bytes per object, header included
EMPTY_BYTES = sys.getsizeof(b"")


def build(total):
    n = total // (OBJECT + 8)  # each object also costs a slot in the list
    length = OBJECT - EMPTY_BYTES  # a variable: b"x" * 67 would be folded into one constant
    return [b"x" * length for _ in range(n)]


def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon"):
                out[key] = int(value.split()[0]) * 1024
    return out


def main():
    total = int(float(sys.argv[1]) * MIB)
    base = threading.active_count()
    print("READY", flush=True)
    if sys.argv[2] == "wait":
        while threading.active_count() == base:
            time.sleep(0.01)
    if sys.stdin.readline().strip() != "go":
        return
    t0 = time.perf_counter()
    keep = build(total)
    seconds = time.perf_counter() - t0
    # All objects are alike. (sum(map(sys.getsizeof, keep)) would hold the GIL for
    # seconds in one C call, long enough for the agent to think heapspy has gone.)
    heap = sys.getsizeof(keep) + len(keep) * sys.getsizeof(keep[0])
    for line in sys.stdin:
        if line.strip() != "report":
            continue
        report = {"heap": heap, "objects": len(keep), "build_s": seconds, **status()}
        report["blocks"] = sys.getallocatedblocks()
        if tracemalloc.is_tracing():
            report["tracemalloc_memory"] = tracemalloc.get_tracemalloc_memory()
            report["traced"] = tracemalloc.get_traced_memory()[0]
        print("REPORT", json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
