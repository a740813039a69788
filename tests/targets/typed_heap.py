"""A heap of known types, built once heapspy's agent is loaded (types on samples, issue 17).

Usage: typed_heap.py GO_FILE
Prints "READY <pid>", waits for GO_FILE to exist (the test makes it once attached), then
keeps, each from its own function:
dicts, bytes, lists, instances of a plain class, of a class with __slots__, and of
subclasses of dict and bytes; prints "BUILT <json>" with how many of each it keeps and,
for bytes, their sizes (what the allocator was asked for: 33 + len on 64-bit CPython), then
sleeps until killed.
"""

import json
import os
import sys
import time

N = 20000
BYTES_LEN = 2000
KEPT = {}  # type: dict


class Plain:
    def __init__(self, i):
        self.i = i


class Slotted:
    __slots__ = ("a",)

    def __init__(self, i):
        self.a = i


class Registry(dict):
    pass


class Blob(bytes):
    __slots__ = ()


def keep_dicts():
    KEPT["dict"] = [{"k": i} for i in range(N)]


def keep_bytes():
    KEPT["bytes"] = [b"%d" % i + bytes(BYTES_LEN) for i in range(N // 10)]


def keep_lists():
    KEPT["list"] = [[i] for i in range(N)]


def keep_plain():
    KEPT["Plain"] = [Plain(i) for i in range(N)]


def keep_slotted():
    KEPT["Slotted"] = [Slotted(i) for i in range(N)]


def keep_registry():
    KEPT["Registry"] = [Registry(k=i) for i in range(N)]


def keep_blobs():
    KEPT["Blob"] = [Blob(b"%d" % i + bytes(BYTES_LEN)) for i in range(N // 10)]


def main():
    print("READY %d" % os.getpid(), flush=True)
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.01)
    for build in (keep_dicts, keep_bytes, keep_lists, keep_plain, keep_slotted,
                  keep_registry, keep_blobs):  # fmt: skip
        build()
    truth = {name: len(objs) for name, objs in KEPT.items()}
    sizes = {
        "bytes": sum(sys.getsizeof(b) for b in KEPT["bytes"]),
        "Blob": sum(sys.getsizeof(b) for b in KEPT["Blob"]),
    }
    print("BUILT " + json.dumps({"objects": truth, "bytes": sizes}), flush=True)
    while True:
        time.sleep(1)


main()
