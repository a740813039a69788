"""A heap of N small objects (a module-level cache of N/4 small dicts) and a leak that
grows while heapspy is attached, for benchmarks/retainers_cost.py.

Usage: retainer_heap.py N. Prints "READY <pid>" once the cache is built. ``Sink.keep``
appends a ~1 KiB bytes object to ``SINK.kept`` every millisecond (up to 20,000). A probe
thread sleeps 1 ms in a loop and records how late it wakes: SIGUSR1 prints "LATENCY
<longest ms> <probes>", SIGUSR2 forgets the longest so far and prints "RESET".
Python 3.8 syntax, standard library only.
"""

import os
import signal
import sys
import threading
import time

CACHE = {f"k{i}": {"id": i, "name": f"n{i}"} for i in range(int(sys.argv[1]) // 4)}


class Sink:
    def __init__(self):
        self.kept = []

    def keep(self, i):
        self.kept.append(b"%07d" % i + bytes(1000))


SINK = Sink()
longest = [0.0, 0]


def probe():
    while True:
        t0 = time.perf_counter()
        time.sleep(0.001)
        late = time.perf_counter() - t0 - 0.001
        longest[1] += 1
        if late > longest[0]:
            longest[0] = late


def report(_signum, _frame):
    print(f"LATENCY {longest[0] * 1000:.3f} {longest[1]}", flush=True)


def reset(_signum, _frame):
    longest[0] = 0.0
    print("RESET", flush=True)


def main():
    signal.signal(signal.SIGUSR1, report)
    signal.signal(signal.SIGUSR2, reset)
    threading.Thread(target=probe, name="probe", daemon=True).start()
    print(f"READY {os.getpid()}", flush=True)
    for i in range(20000):
        SINK.keep(i)
        time.sleep(0.001)
    threading.Event().wait()


if __name__ == "__main__":
    main()
