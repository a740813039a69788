"""Holds known amounts of memory of each kind, for heapspy's RSS breakdown.

Usage: rss_parts.py
Prints "READY <pid> <json>", the json holding what the process knows it holds:
  pymalloc_bytes pymalloc's own count of bytes in its allocated blocks, at READY
  python_bytes   sys.getsizeof of 100,000 small tuples kept in a list (pymalloc)
  mmap_bytes     a 48 MiB anonymous mmap, every page touched
  malloc_bytes   32 MiB malloc'd through ctypes in 64 KiB blocks, touched, kept
  freed_bytes    64 MiB of 1 KiB blocks malloc'd then freed, all but every 64th
                 (which pins the heap so glibc cannot give the rest back by itself)
  threads        20 idle threads
Then sleeps in short steps until killed.
"""

import ctypes
import json
import mmap
import os
import sys
import threading
import time

MiB = 1 << 20


def pymalloc_in_use():
    """pymalloc's own count of bytes in allocated blocks (sys._debugmallocstats, whose
    report goes to fd 2: caught in a file for the moment)."""
    import tempfile

    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        for line in out.read().decode().splitlines():
            if line.startswith("# bytes in allocated blocks"):
                return int(line.split("=")[1].replace(",", ""))
    return 0


def main():
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

    keep = [(i, i + 1) for i in range(100000)]
    python_bytes = sum(sys.getsizeof(t) for t in keep)

    region = mmap.mmap(-1, 48 * MiB)
    for off in range(0, 48 * MiB, 4096):
        region[off] = 1

    kept = []
    for _ in range(32 * MiB // (64 * 1024)):
        p = libc.malloc(64 * 1024)
        libc.memset(p, 1, 64 * 1024)
        kept.append(p)

    burst = []
    for _ in range(64 * MiB // 1024):
        p = libc.malloc(1024)
        libc.memset(p, 2, 1024)
        burst.append(p)
    pins = []
    for i, p in enumerate(burst):
        if i % 64 == 0:
            pins.append(p)
        else:
            libc.free(p)
    freed = (len(burst) - len(pins)) * 1024

    stop = threading.Event()
    threads = [threading.Thread(target=stop.wait, daemon=True) for _ in range(20)]
    for t in threads:
        t.start()
    known = {
        "pymalloc_bytes": pymalloc_in_use(),
        "python_bytes": python_bytes,
        "mmap_bytes": 48 * MiB,
        "malloc_bytes": 32 * MiB,
        "freed_bytes": freed,
        "threads": 20,
    }
    print("READY", os.getpid(), json.dumps(known), flush=True)
    while True:
        time.sleep(0.05)


if __name__ == "__main__":
    main()
