"""Grows outside Python's objects: keeps 1 MiB of malloc'd memory (through ctypes, in
100 KiB blocks) every 50 ms from ``grow_native_cache``; its Python heap stays flat.

Usage: native_grow.py
Prints "READY <pid>", then grows until killed.
"""

import ctypes
import os
import time

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
KEPT = []


def grow_native_cache():
    p = libc.malloc(100 * 1024)
    libc.memset(p, 1, 100 * 1024)
    KEPT.append(p)


def main():
    print("READY", os.getpid(), flush=True)
    while True:
        for _ in range(10):
            grow_native_cache()
        time.sleep(0.05)


if __name__ == "__main__":
    main()
