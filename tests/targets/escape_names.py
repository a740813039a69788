"""Allocates, and keeps, from a function whose name holds terminal escapes.

Usage: escape_names.py
The code object's name (and, from 3.11, its qualified name) is an OSC title change and a
screen clear around "evil"; a real agent reports it like any other name, and heapspy must
never print it raw. Prints "READY <pid>", then allocates 4 KiB blocks for ever, keeping
the last 8,000 (32 MiB live).
"""

import os
import sys
import time

EVIL = "evil\x1b]0;pwned\x07\x1b[2Jname"
kept = [None] * 8000


def _alloc(i):
    kept[i % 8000] = bytearray(4096)


names = {"co_name": EVIL}
if sys.version_info >= (3, 11):
    names["co_qualname"] = EVIL
evil = type(_alloc)(_alloc.__code__.replace(**names), globals())

print("READY", os.getpid(), flush=True)
i = 0
while True:
    for _ in range(200):
        evil(i)
        i += 1
    time.sleep(0.005)
