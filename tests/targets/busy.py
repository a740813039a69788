"""Busy main thread doing float arithmetic; checks its own results until told to stop.

Usage: busy.py STOPFILE [SPINNERS]
Every round computes the same float series; a round that disagrees with the first means
registers or FP/vector state were corrupted from outside. Prints "READY <pid>" once
running and "DONE <rounds> <mismatches>" when STOPFILE appears; exit status 0 only if
nothing disagreed.
"""

import math
import os
import sys
import threading


def spin(stop):
    x = 0.0
    while not stop.is_set():
        for i in range(1000):
            x = math.fsum((x, math.sin(i) * 1e-3))


def one_round():
    total = 0.0
    acc = 1
    for i in range(1, 20001):
        total += math.sqrt(i) * 1.000001 / (i + 0.5)
        acc = (acc * 31 + i) % 1000003
    return total, acc


def main():
    stop_file = sys.argv[1]
    spinners = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    stop = threading.Event()
    threads = [threading.Thread(target=spin, args=(stop,), daemon=True) for _ in range(spinners)]
    for t in threads:
        t.start()
    expected = one_round()
    rounds = mismatches = 0
    print("READY", os.getpid(), flush=True)
    while not os.path.exists(stop_file):
        if one_round() != expected:
            mismatches += 1
        rounds += 1
    stop.set()
    print("DONE", rounds, mismatches, flush=True)
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
