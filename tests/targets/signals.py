"""Busy main thread with SIGUSR1/SIGUSR2 handlers that count what arrives.

Usage: signals.py STOPFILE [SPINNERS]
Prints "READY <pid>"; computes until STOPFILE exists, then prints
"DONE <usr1> <usr2> <mismatches>" and exits 0 if its float results never disagreed.
"""

import math
import os
import signal
import sys
import threading

counts = {signal.SIGUSR1: 0, signal.SIGUSR2: 0}


def handler(signum, frame):
    counts[signum] += 1


def spin(stop):
    while not stop.is_set():
        sum(i * 0.5 for i in range(1000))


def one_round():
    return sum(math.sqrt(i) / (i + 0.25) for i in range(1, 5001))


def main():
    stop_file = sys.argv[1]
    spinners = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    signal.signal(signal.SIGUSR1, handler)
    signal.signal(signal.SIGUSR2, handler)
    stop = threading.Event()
    for _ in range(spinners):
        threading.Thread(target=spin, args=(stop,), daemon=True).start()
    expected = one_round()
    mismatches = 0
    print("READY", os.getpid(), flush=True)
    while not os.path.exists(stop_file):
        if one_round() != expected:
            mismatches += 1
    stop.set()
    print("DONE", counts[signal.SIGUSR1], counts[signal.SIGUSR2], mismatches, flush=True)
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
