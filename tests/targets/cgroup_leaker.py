"""Leaks towards its memory cgroup's limit until the kernel's OOM killer ends it.

Usage: cgroup_leaker.py GOFILE MIB_PER_SECOND
Prints "READY <pid>", waits for GOFILE to exist (so heapspy can attach first), then keeps
4 KiB bytes objects in a module-level list from ``hoard_blocks`` at MIB_PER_SECOND.
"""

import os
import sys
import time

HOARD = []


def hoard_blocks(count):
    HOARD.extend(b"\x01" * 4096 + os.urandom(8) for _ in range(count))


def main():
    go_file, rate = sys.argv[1], float(sys.argv[2])
    print("READY", os.getpid(), flush=True)
    while not os.path.exists(go_file):
        time.sleep(0.01)
    per_tick = int(rate * 256 / 20)  # 256 blocks of 4 KiB per MiB, 20 ticks a second
    while True:
        hoard_blocks(per_tick)
        time.sleep(0.05)


if __name__ == "__main__":
    main()
