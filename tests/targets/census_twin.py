"""The census's two walks side by side in one interpreter: the native one (the shim's
census_walk.c) and the pure-Python fallback, over census_app's roots, and the native
walk's handling of objects the target drops while the walk holds them.

Usage: census_twin.py AGENT_DIR SHIM_PATH
Prints "TWIN <json>": {"native": {"root|type": [objects, bytes]}, "python": {...},
"walkers": [...], "orphan_freed": bool, "orphans": n, "unloaded": bool}.
"""

import collections
import gc
import json
import os
import sys
import threading
import weakref

sys.path.insert(0, sys.argv[1])
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
SHIM = sys.argv[2]
sys.argv[1:] = ["2000"]  # census_app's cache size
import census_app  # noqa: E402, F401 - its roots are what the walks count
from heapspy_agent import census, census_walk  # noqa: E402

ROOTS = (
    "census_app.CACHE",
    "census_app.Registry.items",
    "census_app.HANDLER",
    "__main__.SEEN",
    "__main__.BAG",
)
# a set (opened through its iterator) and a dict subclass (its items, then the rest)
SEEN = {("seen-%d" % i, i * 7) for i in range(3000)}
BAG = collections.Counter({"bag-%d" % i: i for i in range(3000)})


def totals(walk):
    while not walk.step(0.02):
        pass
    out = {}
    for frame in walk.result_frames(1000):
        for path, objects, nbytes in frame["sites"]:
            if path[0] in ROOTS:
                entry = out.setdefault(path[0] + "|" + path[-1], [0, 0])
                entry[0] += objects
                entry[1] += nbytes
    walker = walk.walker
    walk.close()
    return out, walker


library = census_walk.load(SHIM)
native, native_walker = totals(census.new_census([], threading.get_ident(), library))
gc_enabled_after = gc.isenabled()  # the census keeps collections off only while it runs
python, python_walker = totals(census.new_census([], threading.get_ident(), None))


def gc_pass():
    """3.14: the pass over the gc's lists a slice at a time, while the target runs between
    slices; None where the interpreter has no such pass."""
    walk = library.new(lambda tp: (1, None, 0, False), lambda cls: False, 3, 10, 1 << 26, 0, 1)
    keep = [{"k": i} for i in range(20000)]  # tracked (3.14 tracks every dict) throughout
    rest = []
    if not walk.gc_begin(rest, gc.get_threshold(), census._collections()):
        walk.free()
        return None
    enabled = gc.isenabled()
    gc.disable()  # as the census keeps automatic collections off during the pass
    steps = 0
    while True:
        done = walk.gc_step(0, census._collections())  # budget 0: ~1024 objects a step
        if done:
            break
        steps += 1
        churn = [{"c": i} for i in range(100)]  # made and freed between two slices
        del churn
    found = {id(o) for o in rest}
    missing = sum(1 for o in keep if id(o) not in found)
    duplicates = len(rest) - len(found)
    # a collection between two slices starts the pass again, at most 3 times
    again = []
    walk.gc_begin(again, gc.get_threshold(), census._collections())
    codes = []
    while not codes or codes[-1] == 0:
        codes.append(walk.gc_step(0, census._collections()))
        gc.collect(0)
    if enabled:
        gc.enable()
    walk.free()
    return {
        "done": done,
        "steps": steps,
        "missing": missing,
        "duplicates": duplicates,
        "gave_up": codes[-1],
        "again_duplicates": len(again) - len({id(o) for o in again}),
        "objects": len(rest),
    }


gc_result = gc_pass()


# A container the walk holds on its stack, dropped by the target between two slices:
# the walk must neither touch freed memory nor free it itself (its finalizer would run
# in the walk's thread); the main thread frees it (a pending call).
class Box:
    pass


held = [[Box() for _ in range(50)] for _ in range(2000)]
probe = weakref.ref(held[-1][0])
walk = library.new(lambda tp: (1, None, 16, False), lambda cls: False, 3, 1000, 1 << 26, 0, 1)
walk.visit(held, walk.node(-1, 2))
walk.run(0)  # one turn: the list and some of its items are on the walk's stack
del held
while walk.run(10**9) == 0:
    pass
orphans = walk.stats()[6]
walk.free()
for _ in range(1000):  # the pending call runs at the main thread's next checks
    if probe() is None:
        break
    gc.collect(0)
# the library stays mapped while a walk is alive (its free would call into it)
alive = library.new(lambda tp: (1, None, 0, False), lambda cls: False, 3, 10, 1 << 20, 0, 1)
kept = not library.unload()
alive.free()
unloaded = kept and library.unload()



result = {
    "gc_pass": gc_result,
    "gc_enabled_after": gc_enabled_after,
    "native": native,
    "python": python,
    "walkers": [native_walker, python_walker],
    "orphan_freed": probe() is None,
    "orphans": orphans,
    "unloaded": unloaded,
}
print("TWIN " + json.dumps(result), flush=True)
