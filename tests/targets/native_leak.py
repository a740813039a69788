"""Leaks outside Python's allocator domains, once heapspy's agent is sampling.

Usage: native_leak.py LIBRARY [EXTENSION_DIR]
Leaks one after the other, each of about 20 MB, from its own line:
  ctypes  LIBRARY's leak() (tests/native_lib/leak.c) through ctypes: 64 KiB blocks
  extension  the same through a compiled extension (leakext, in EXTENSION_DIR) that keeps
          the GIL
  zlib    zlib compress objects kept alive (their state: PyMem_RawMalloc)
  sqlite  an in-memory sqlite3 database that keeps growing (libsqlite3's malloc, called
          with the GIL released)

Prints "READY <pid>", waits until the agent's collector runs, leaks, then prints
"DONE <mode>=<bytes>..." (the exact bytes for ctypes; for the others what glibc says the
leak added) and idles until killed. Python garbage churns meanwhile from ``churn`` so that
the leaks are not the only sites.
"""

import ctypes
import os
import sqlite3
import sys
import time
import zlib

KEPT = []
TARGET = 20 * 1000 * 1000


class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]  # fmt: skip


_libc = ctypes.CDLL(None)
_libc.mallinfo2.restype = Mallinfo2


def in_use():
    m = _libc.mallinfo2()
    return m.uordblks + m.hblkhd


lib = ctypes.CDLL(sys.argv[1])
lib.leak.restype = ctypes.c_void_p
lib.leak.argtypes = [ctypes.c_size_t]
if len(sys.argv) > 2:
    sys.path.insert(0, sys.argv[2])
    import leakext
else:
    leakext = None
db = sqlite3.connect(":memory:")
db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")


def leak_ctypes():
    for _ in range(64):
        lib.leak(64 * 1024)  # LINE: ctypes
    return 64 * 64 * 1024


def leak_extension():
    for _ in range(64):
        leakext.leak(64 * 1024)  # LINE: extension
    return 64 * 64 * 1024


def leak_zlib():
    for _ in range(16):  # a loop, not a generator: the leak's frame is leak_zlib's own
        KEPT.append(zlib.compressobj(9))  # noqa: PERF401  # LINE: zlib
    return 0


def leak_sqlite():
    rows = [(os.urandom(1000),) for _ in range(4000)]
    db.executemany("INSERT INTO t (payload) VALUES (?)", rows)  # LINE: sqlite
    return 0


def churn():
    junk = [str(i) * 3 for i in range(2000)]
    return len(junk)


def collecting():
    agent = sys.modules.get("heapspy_agent.agent")
    active = getattr(agent, "_active", None)
    return active is not None and getattr(active, "collector", None) is not None


def main():
    print("READY", os.getpid(), flush=True)
    while not collecting():
        time.sleep(0.01)
    done = []
    modes = ("ctypes", "zlib", "sqlite") + (("extension",) if leakext else ())
    for mode in modes:
        leak = globals()["leak_" + mode]
        before = in_use()
        exact = 0
        while (exact or in_use() - before) < TARGET:
            exact += leak()
            churn()
            time.sleep(0.02)
        done.append("%s=%d" % (mode, exact or in_use() - before))
    print("DONE", *done, flush=True)
    while True:
        churn()
        time.sleep(0.05)


if __name__ == "__main__":
    main()
