"""Shared by the shim target scripts (Python 3.8 syntax: they run under every interpreter).

The test runs a script with PYTHONPATH=<repo>/agent and HEAPSPY_SHIM=<built library>;
the script prints one JSON object on its last stdout line and exits 0.
"""

import ctypes
import json
import os
import re
import sys
from typing import Any, Dict, List, Optional  # noqa: UP035 - runs on 3.8

from heapspy_agent.shim import Drain, Shim, Stack, StackCounts, scale_heap_sample

MiB = 1 << 20

_api = ctypes.pythonapi
for _name, _res, _args in (
    ("PyMem_Malloc", ctypes.c_void_p, [ctypes.c_size_t]),
    ("PyMem_Calloc", ctypes.c_void_p, [ctypes.c_size_t, ctypes.c_size_t]),
    ("PyMem_Realloc", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t]),
    ("PyMem_Free", None, [ctypes.c_void_p]),
    ("PyObject_Malloc", ctypes.c_void_p, [ctypes.c_size_t]),
    ("PyObject_Free", None, [ctypes.c_void_p]),
):
    _fn = getattr(_api, _name)
    _fn.restype = _res
    _fn.argtypes = _args

mem_malloc = _api.PyMem_Malloc
mem_calloc = _api.PyMem_Calloc
mem_realloc = _api.PyMem_Realloc
mem_free = _api.PyMem_Free
obj_malloc = _api.PyObject_Malloc
obj_free = _api.PyObject_Free


def load() -> Shim:
    return Shim.load(os.environ["HEAPSPY_SHIM"])


def emit(result: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def marker_lines(path: str) -> Dict[str, int]:
    """Line numbers of ``# LINE: name`` markers in a script."""
    found = {}
    with open(path) as f:
        for number, text in enumerate(f, 1):
            m = re.search(r"# LINE: (\w+)", text)
            if m:
                found[m.group(1)] = number
    return found


class Profile:
    """Accumulates drains the way the agent will: stacks by id, latest counts by id."""

    def __init__(self, shim: Shim) -> None:
        self.shim = shim
        self.stacks: Dict[int, Stack] = {}
        self.counts: Dict[int, StackCounts] = {}
        self.last: Optional[Drain] = None

    def drain(self) -> Drain:
        d = self.shim.drain()
        for s in d.new_stacks:
            assert s.stack_id not in self.stacks, "stack reported twice"
            self.stacks[s.stack_id] = s
        for c in d.changed:
            assert c.stack_id in self.stacks, "counts for an unknown stack"
            self.counts[c.stack_id] = c
        self.last = d
        return d

    def where(self, function: str, line: Optional[int] = None) -> List[StackCounts]:
        """Counts of the stacks whose leaf frame is function (at line)."""
        out = []
        for sid, c in self.counts.items():
            frames = self.stacks[sid].frames
            if frames and frames[-1].function == function:
                if line is None or frames[-1].line == line:
                    out.append(c)
        return out

    def summary(self, function: str, rate: int, line: Optional[int] = None) -> Dict[str, Any]:
        """Raw, shim-estimated and Go-per-stack-estimated values for one leaf function."""
        cs = self.where(function, line)
        go_live = go_alloc = 0
        for c in cs:
            go_live += scale_heap_sample(c.live_count, c.live_bytes, rate)[1]
            go_alloc += scale_heap_sample(c.alloc_count, c.alloc_bytes, rate)[1]
        return {
            "stacks": len(cs),
            "alloc_count": sum(c.alloc_count for c in cs),
            "live_count": sum(c.live_count for c in cs),
            "live_bytes": sum(c.live_bytes for c in cs),
            "est_live_bytes": sum(c.est_live_bytes for c in cs),
            "est_alloc_bytes": sum(c.est_alloc_bytes for c in cs),
            "go_live_bytes": go_live,
            "go_alloc_bytes": go_alloc,
        }

    def stack_of(self, function: str) -> List[List[Any]]:
        """The distinct stacks (root -> leaf, as [function, line]) ending at function."""
        return [
            [[f.function, f.line] for f in s.frames]
            for s in self.stacks.values()
            if s.frames and s.frames[-1].function == function
        ]


def maps_mention(path: str) -> bool:
    with open("/proc/self/maps") as f:
        return any(path in line for line in f)
