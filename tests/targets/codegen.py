"""A request loop that runs freshly generated code, as template engines and ORMs do; and a
keeper of fixed-size blocks for the rate-change test.

Usage: codegen.py MODE.
  requests: each request compiles handler_N in gen_N.py and calls it (its blocks are freed
            when it returns); while "steady" is on (SIGUSR1 toggles it, off at start) each
            request also calls steady(), whose block is freed at once.
  rate:     waits for SIGUSR1, keeps PHASE1 blocks of bytes(SMALL) made by make_small,
            then waits for SIGUSR1 again and keeps PHASE2 more.
SIGUSR2 writes the counts, and how many generated code objects are still alive, as JSON
to $HEAPSPY_PROBE. Prints "READY <pid>". Python 3.8+.
"""

import json
import os
import signal
import sys
import time
import weakref

MODE = sys.argv[1] if len(sys.argv) > 1 else "requests"
SMALL = 1000
PHASE1, PHASE2 = 30000, 5000
STEADY = 2000
counts = {"requests": 0, "steady_calls": 0, "steady_on": False, "kept": 0, "phase": 0}
kept = []
alive = weakref.WeakSet()  # the generated handlers' code objects that still exist


def probe(_sig, _frame):
    counts["steady_size"] = sys.getsizeof(bytes(STEADY))  # the request of one block
    counts["small_size"] = sys.getsizeof(bytes(SMALL))
    counts["alive_code"] = len(alive)  # only a profiler holds them after their request
    path = os.environ["HEAPSPY_PROBE"]
    with open(path + ".tmp", "w") as f:
        json.dump(counts, f)
    os.replace(path + ".tmp", path)


def toggle(_sig, _frame):
    if MODE == "rate":
        counts["phase"] += 1
    else:
        counts["steady_on"] = not counts["steady_on"]


def steady():
    return bytes(STEADY)


def make_small():
    return bytes(SMALL)


def fill(n):  # one stack for both phases
    while len(kept) < n:
        kept.append(make_small())
    counts["kept"] = len(kept)


def request(n):
    source = "def handler_%d(size):\n    return [bytearray(size) for _ in range(40)]\n" % n
    scope = {}
    exec(compile(source, "gen_%d.py" % n, "exec"), scope)
    handler = scope["handler_%d" % n]
    alive.add(handler.__code__)
    handler(512)
    del handler, scope
    if counts["steady_on"]:
        steady()
        counts["steady_calls"] += 1
    counts["requests"] += 1


signal.signal(signal.SIGUSR2, probe)
signal.signal(signal.SIGUSR1, toggle)
print("READY %d" % os.getpid(), flush=True)
if MODE == "rate":
    for phase, n in ((1, PHASE1), (2, PHASE1 + PHASE2)):
        while counts["phase"] < phase:
            time.sleep(0.01)
        fill(n)  # the same stack in both phases
    while True:
        time.sleep(0.05)
else:
    n = 0
    while True:
        request(n)
        n += 1
        time.sleep(0.0005)
