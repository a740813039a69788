"""Retainers of leak sites: which roots hold the sampled live objects of chosen stacks.

heapspy names the stacks (the sites a dump ranks highest, and the one a leak rule fired
on). The agent takes the live sampled blocks of those stacks from the shim, finds the
object each block holds (where it starts in its block: Cargo-free/object_layout.c, the
check types on dumps make), then runs a census walk (heapspy_agent.census: same roots,
same documented order, same GIL slices) that notes the path -- the root, then the
containers on the way -- under which it counts each of those objects. Each object gets
the path of the first root that reaches it, as the census gives it its bytes.

What the walk cannot place is said as such: a block that holds no Python object (a
list's item array, a buffer) is ``NOT_OBJECT``; an object no root reached, or whose
block was freed (or reused by another stack) while the walk ran, is ``NOT_REACHED``.
Objects found only from the gc's leftovers carry the census's own root labels
(``unreachable (cyclic garbage)``, ``held outside Python roots``).

Once the walk is over, the top path of each stack (at most MAX_NAMED distinct paths, the
most bytes first) gets the names of its steps, one path a slice (heapspy_agent.
retainer_names: ``.pending``, ``['key']``); each row sent carries them beside its path.

Bounded: at most MAX_TARGETS objects (the largest blocks first), a walk as long as a
census, and at most MAX_PATHS paths per stack sent (the rest folded into ``[other]``).
Only integers (addresses) are held between the start and the end: holding the objects
would mark them as the agent's own and keep the freed ones alive.
"""

import time
from typing import Any, Dict, List, Optional, Set, Tuple

from heapspy_agent import census as census_mod
from heapspy_agent import object_types, retainer_names
from heapspy_agent.schema import MAX_RETAINER_PATHS, MAX_RETAINER_STACKS
from heapspy_agent.shim import DOM_OBJ, Shim

MAX_STACKS = MAX_RETAINER_STACKS
# sampled objects looked for in one walk, the largest blocks first: finding the object in
# each block is a ctypes call (~1-2 us) made with the GIL held before the walk starts
MAX_TARGETS = 10000
MAX_PATHS = MAX_RETAINER_PATHS
MAX_NAMED = 16  # distinct top paths whose steps are named (retainer_names)
NOT_OBJECT = "(not a Python object)"
NOT_REACHED = "not reached (freed meanwhile / held only by C)"

_Key = Tuple[str, ...]


def _live_by_stack(shim: Shim, wanted: Set[int]) -> Dict[int, Tuple[int, int, int, float]]:
    """address -> (stack id, size, domain, weight) of the live sampled blocks of ``wanted``."""
    return {
        b.address: (b.stack_id, b.size, b.domain, b.weight)
        for b in shim.live_blocks()
        if b.stack_id in wanted
    }


class RetainerWalk:
    """One retainer search, advanced by ``step`` like a census (the agent runs it in the
    census's place); ``result()`` is the RETAINERS frame's body."""

    def __init__(self, shim: Shim, stacks: List[int], census: census_mod.Census) -> None:
        began = time.perf_counter()
        self.shim = shim
        self.census = census
        self.stacks = sorted(set(stacks))[:MAX_STACKS]
        blocks = _live_by_stack(shim, set(self.stacks))
        # the largest first: where a site holds more samples than MAX_TARGETS, its bytes
        # are best represented by its biggest blocks
        chosen = sorted(blocks.items(), key=lambda kv: -kv[1][1] * kv[1][3])[:MAX_TARGETS]
        self.blocks = dict(chosen)
        self.left_out = len(blocks) - len(chosen)
        del blocks, chosen
        objects = [(a, v[1], v[2]) for a, v in self.blocks.items() if v[2] == DOM_OBJ]
        types = object_types.reachable_types()
        found = shim.block_objects(objects, types, object_types.min_sizes(types))
        del types
        self.object_of = {objects[i][0]: found[i] for i in range(len(objects)) if found[i]}
        del objects, found
        self.ok = census.set_targets(list(self.object_of.values()))
        self.done = False
        self.path_of = None  # type: Optional[Dict[int, Optional[_Key]]]
        self.to_name = []  # type: List[Tuple[_Key, Set[int]]]
        self.names = {}  # type: Dict[_Key, List[str]]
        self.setup = time.perf_counter() - began  # one GIL hold, before the walk's slices

    # the census's interface, as the agent drives it
    def step(self, budget: float) -> bool:
        """The census's walk, then the naming of the top paths, one or more a slice."""
        if not self.census.done:
            if not self.census.step(budget) or self.census.partial:
                self.done = self.census.done
                return self.done
            self._paths()
            self._choose_names()
            return not self.to_name and self._finish()
        deadline = time.perf_counter() + budget
        while self.to_name and time.perf_counter() < deadline:
            path, ids = self.to_name.pop(0)
            self.names[path] = retainer_names.name_path(self.census, path, ids)
        return not self.to_name and self._finish()

    def _finish(self) -> bool:
        self.done = True
        return True

    def _paths(self) -> Dict[int, Optional[_Key]]:
        """Block address -> the path its object was counted under (once the walk ends)."""
        if self.path_of is None:
            blocks = list(self.object_of.items())
            found = self.census.target_paths([obj for _, obj in blocks]) if self.ok else []
            self.path_of = {blocks[i][0]: found[i] for i in range(len(found))}
        return self.path_of

    def _choose_names(self) -> None:
        """The top path of each stack, by bytes, with the objects counted under it."""
        path_of = self._paths()
        by_stack = {}  # type: Dict[int, Dict[_Key, float]]
        ids = {}  # type: Dict[_Key, Set[int]]
        for address, (sid, size, _domain, weight) in self.blocks.items():
            path = path_of.get(address)
            if path is None:
                continue
            acc = by_stack.setdefault(sid, {})
            acc[path] = acc.get(path, 0.0) + weight * size
            ids.setdefault(path, set()).add(self.object_of[address])
        top = {}  # type: Dict[_Key, float]
        for paths in by_stack.values():
            path, nbytes = max(paths.items(), key=lambda kv: kv[1])
            top[path] = top.get(path, 0.0) + nbytes
        ranked = sorted(top, key=lambda p: -top[p])[:MAX_NAMED]
        self.to_name = [(p, ids[p]) for p in ranked if len(p) >= 3]

    def progress(self) -> Dict[str, Any]:
        return self.census.progress()

    def stop(self) -> None:
        self.census.stop()
        self.to_name = []
        self.done = True

    def close(self) -> None:
        self.census.close()

    def _names(self, path: _Key) -> List[str]:
        return self.names.get(path) or [""] * len(path)

    def result(self) -> Dict[str, Any]:
        """Per stack id, its live sampled bytes by path: ``[[root, container...], samples,
        estimated bytes, [step names]]`` (one name per path element, "" where unnamed),
        most bytes first; plus how long the walk took."""
        census = self.census
        path_of = self._paths()
        now = _live_by_stack(self.shim, set(self.stacks))  # freed meanwhile: not placed
        sums = {}  # type: Dict[int, Dict[_Key, List[float]]]
        for address, (sid, size, _domain, weight) in self.blocks.items():
            key: Optional[_Key] = None
            if address not in self.object_of:
                key = (NOT_OBJECT,)
            elif now.get(address, (None,))[0] != sid:
                key = (NOT_REACHED,)
            else:
                key = path_of.get(address) or (NOT_REACHED,)
            acc = sums.setdefault(sid, {}).setdefault(key, [0, 0.0])
            acc[0] += 1
            acc[1] += weight * size
        out = {}  # type: Dict[str, List[List[Any]]]
        for sid, by_path in sums.items():
            ranked = sorted(by_path.items(), key=lambda kv: -kv[1][1])
            kept = ranked[: MAX_PATHS - 1] if len(ranked) > MAX_PATHS else ranked
            rows = [[list(p), int(v[0]), float(v[1]), self._names(p)] for p, v in kept]
            rest = ranked[len(kept) :]
            if rest:
                n = sum(int(v[0]) for _, v in rest)
                rows.append([[census_mod.OTHER], n, sum(float(v[1]) for _, v in rest), [""]])
            out[str(sid)] = rows
        state = census.progress()
        return {
            "stacks": out,
            "targets": len(self.object_of),
            "left_out": self.left_out,
            "partial": bool(census.partial),
            "elapsed": state["elapsed"],
            "cpu": state["cpu"],
            "longest_slice": state["longest_slice"],
            "longest_slice_wall": state["longest_slice_wall"],
            "objects": state["objects"],
            "walker": state["walker"],
            "setup": self.setup,
        }
