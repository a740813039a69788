"""Allocates from every kind of code CPython names in angle brackets.

Usage: anonymous_frames.py
Prints "READY <pid>", then, until killed, allocates 64 KiB blocks from module-level code,
a module-level list comprehension, and, inside ``comprehensions``, a list, dict and set
comprehension, a generator expression and a lambda; the last rounds are kept alive.
"""

import os
import time

BLOCK = 64 * 1024
KEEP = []


def comprehensions():
    listed = [bytearray(BLOCK) for _ in range(2)]
    mapped = {i: bytearray(BLOCK) for i in range(2)}
    unique = {bytes(BLOCK + i) for i in range(2)}
    generated = list(bytearray(BLOCK) for _ in range(2))  # noqa: C400 - a genexpr
    make = lambda: bytearray(BLOCK)  # noqa: E731 - a lambda is the point
    return listed, mapped, unique, generated, make()


print("READY", os.getpid(), flush=True)
while True:
    KEEP.append(comprehensions())
    KEEP.append([bytearray(BLOCK) for _ in range(2)])
    KEEP.append(bytearray(BLOCK))
    del KEEP[:-60]
    time.sleep(0.005)
