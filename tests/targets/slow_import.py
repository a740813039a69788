"""A target whose main thread is inside a slow first import of ``json`` (as on a slow
network filesystem) when heapspy attaches: the module is in sys.modules, half-made, for
SECONDS while the import runs bytecode. Prints "READY <pid>" as the slow import starts,
then "IMPORTED" when it is done, then keeps allocating. Written for Python 3.8+.

Usage: slow_import.py SECONDS
"""

import importlib.abc
import importlib.util
import os
import sys
import time

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
assert "json" not in sys.modules


class SlowLoader(importlib.abc.Loader):
    def __init__(self, real):
        self.real = real

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module):
        print("READY %d" % os.getpid(), flush=True)
        end = time.monotonic() + SECONDS
        x = 0
        while time.monotonic() < end:  # bytecode runs: pending calls can run in here
            x += 1
        self.real.exec_module(module)


class SlowFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "json":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        spec.loader = SlowLoader(spec.loader)
        return spec


sys.meta_path.insert(0, SlowFinder())
import json  # noqa: E402

print("IMPORTED", flush=True)
kept = []
while True:
    kept.append(json.dumps({"n": len(kept)}))
    del kept[:-1000]
    time.sleep(0.001)
