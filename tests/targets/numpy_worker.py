"""An attach target holding NumPy arrays: a retained 48 MiB at ``hold_arrays`` and churn
at ``scratch``, built on SIGUSR1 (the test sends it once heapspy reports NumPy hooked, so
every byte is allocated under the hook).

Usage: numpy_worker.py early|late -- ``late`` imports NumPy only after the agent arrived
(the agent hooks NumPy's handler at a later interval). SIGUSR2 writes the state to
$HEAPSPY_PROBE: agent modules, NumPy's current handler name, what was built.
Written for Python 3.8+.
"""

import json
import os
import signal
import sys
import time

WHEN = sys.argv[1]
if WHEN == "early":
    import numpy as np
kept = []


def handler_name():
    numpy = globals().get("np")  # bound once its import has finished
    if numpy is None:
        return None
    core = getattr(numpy, "_core", None) or numpy.core
    return core.multiarray.get_handler_name()


def probe(_sig, _frame):
    state = {
        "modules": sorted(m for m in sys.modules if m.startswith("heapspy_agent")),
        "handler": handler_name(),
        "kept_bytes": sum(a.nbytes for a in kept),
    }
    path = os.environ["HEAPSPY_PROBE"]
    with open(path + ".tmp", "w") as f:
        json.dump(state, f)
    os.replace(path + ".tmp", path)


def hold_arrays():
    kept.extend(np.ones(2048) for _ in range(3072))  # 16 KiB buffers, 48 MiB in all


def scratch():
    return float(np.empty(4096).sum())


build = []
signal.signal(signal.SIGUSR2, probe)
signal.signal(signal.SIGUSR1, lambda _sig, _frame: build.append(1))
print("READY %d" % os.getpid(), flush=True)
while not any(m.startswith("heapspy_agent") for m in sys.modules):
    time.sleep(0.01)
if WHEN == "late":
    time.sleep(0.3)  # past the agent's first interval
    import numpy as np
while not build:
    time.sleep(0.01)
hold_arrays()
while True:
    scratch()
    time.sleep(0.001)
