"""A worker whose heap a census must explain: census_app's cache, class registry,
closure and NumPy array; a worker thread's frame locals; cyclic garbage kept by
gc.disable(); and a latency probe that measures the longest pause the census causes.

Usage: census_target.py [N_CACHE]
Prints "READY <pid>", then "TRUTH <json>" (the target's own sys.getsizeof walk of each
root). On SIGUSR1 prints "LATENCY <longest pause in ms> <probes>" and "CALLS <json>" (the target's
code that ran on a census_app.Trap: none may); on SIGUSR2 forgets the longest pause so far
and prints "RESET" (a benchmark measures the census alone, not the attach before it).
"""

import gc
import json
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import census_app  # noqa: E402

gc.disable()
for _ in range(500):  # cyclic garbage: nothing refers to it, nothing collects it
    a = {"payload": bytes(1000)}
    b = [a]
    a["back"] = b
del a, b

started = threading.Event()
WORKER_FLOATS = 7000


def work():
    floats = [float(i) + 0.5 for i in range(WORKER_FLOATS)]  # held by this frame only
    started.set()
    threading.Event().wait()
    return floats


longest = [0.0, 0]


def probe():
    """How late a 1 ms sleep wakes: the target's own view of a pause."""
    while True:
        t0 = time.perf_counter()
        time.sleep(0.001)
        late = time.perf_counter() - t0 - 0.001
        longest[1] += 1
        if late > longest[0]:
            longest[0] = late


def report(_signum, _frame):
    print("LATENCY %.3f %d" % (longest[0] * 1000, longest[1]), flush=True)
    print("CALLS " + json.dumps(census_app.CALLS), flush=True)


def reset(_signum, _frame):
    longest[0] = 0.0
    longest[1] = 0
    print("RESET", flush=True)


signal.signal(signal.SIGUSR1, report)
signal.signal(signal.SIGUSR2, reset)
threading.Thread(target=work, name="census-worker", daemon=True).start()
started.wait()
truth = census_app.truth()
truth["thread census-worker: work"] = {"list": [1, 0], "float": [WORKER_FLOATS, 0]}
threading.Thread(target=probe, name="latency-probe", daemon=True).start()
print("READY %d" % os.getpid(), flush=True)
print("TRUTH " + json.dumps(truth), flush=True)
while True:
    time.sleep(0.2)
