"""The census's two walks (native and Python) looking for chosen objects, as the retainers
of leak sites do: each must name the root that holds them, and garbage as garbage.

Usage: retainer_twin.py AGENT_DIR SHIM_PATH
Prints "TWIN <json>": {"native": {"name": path}, "python": {...}, "walkers": [...]}.
"""

import gc
import json
import sys
import threading

sys.path.insert(0, sys.argv[1])
from heapspy_agent import census, census_walk  # noqa: E402

gc.disable()


class Holder:
    def __init__(self):
        self.pending = [b"held-by-attribute %d" % i for i in range(50)]


class Registry:
    entries = [b"held-by-class %d" % i for i in range(50)]


HOLDER = Holder()
cycle = [b"garbage %d" % i for i in range(50)]
cycle.append(cycle)
GARBAGE_ID = id(cycle[0])
del cycle

ready = threading.Event()
local_id = []


def worker():
    kept = [b"held-by-frame %d" % i for i in range(50)]
    local_id.append(id(kept[0]))
    ready.set()
    threading.Event().wait()


threading.Thread(target=worker, name="keeper", daemon=True).start()
ready.wait()
TARGETS = {
    "attribute": id(HOLDER.pending[0]),
    "class": id(Registry.entries[0]),
    "frame": local_id[0],
    "garbage": GARBAGE_ID,
}


def paths(walk):
    addresses = sorted(TARGETS.values())
    assert walk.set_targets(addresses)
    while not walk.step(0.02):
        pass
    found = dict(zip(addresses, walk.target_paths(addresses)))
    walker = walk.walker
    walk.close()
    return {name: list(found[a] or ()) for name, a in TARGETS.items()}, walker


library = census_walk.load(sys.argv[2])
native, native_walker = paths(census.new_census([], threading.get_ident(), library))
python, python_walker = paths(census.new_census([], threading.get_ident(), None))
print("TWIN " + json.dumps({"native": native, "python": python,
                            "walkers": [native_walker, python_walker]}), flush=True)
