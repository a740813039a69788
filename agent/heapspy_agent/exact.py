"""Exact mode: every allocation recorded by tracemalloc (``--rate 1``, and the fallback).

tracemalloc only keeps live blocks and knows frames by file and line, so this collector
reports live bytes per stack with empty function names; heapspy names the frames from
the source on its own side, never in the target.
"""

import tracemalloc
from typing import Any, Dict, List, Tuple

FrameKey = Tuple[str, int]


class TracemallocCollector:
    mode = "exact"

    def __init__(self, frames: int, exclude_dir: str, totals_source: Any = None) -> None:
        # A target that already traces keeps its own tracemalloc: we read it and, at
        # detach, leave it running exactly as we found it.
        self.owned = not tracemalloc.is_tracing()
        if self.owned:
            tracemalloc.start(max(1, frames))
        self.frames = tracemalloc.get_traceback_limit()
        # Our own allocations are left out per distinct traceback, after grouping:
        # Snapshot.filter_traces would test every trace (22 s of 28 at 300k blocks).
        self._exclude = (exclude_dir.rstrip("/") + "/", tracemalloc.__file__)
        # The shim at rate 0, hooked on top of tracemalloc, counts every allocation.
        self.totals_source = totals_source
        self._stack_ids: Dict[Tuple[FrameKey, ...], int] = {}
        self._last: Dict[int, Tuple[int, int]] = {}

    def collect(self) -> Dict[str, Any]:
        snapshot = tracemalloc.take_snapshot()
        new_stacks: List[Dict[str, Any]] = []
        current: Dict[int, Tuple[int, int]] = {}
        own_dir, own_file = self._exclude
        for stat in snapshot.statistics("traceback"):
            key = tuple((f.filename, f.lineno) for f in stat.traceback)  # oldest first
            if any(fn.startswith(own_dir) or fn == own_file for fn, _ in key):
                continue
            sid = self._stack_ids.get(key)
            if sid is None:
                sid = len(self._stack_ids) + 1
                self._stack_ids[key] = sid
                new_stacks.append({"id": sid, "frames": [["", fn, ln] for fn, ln in key]})
            count, size = current.get(sid, (0, 0))
            current[sid] = (count + stat.count, size + stat.size)
        changed: Dict[str, List[int]] = {}
        for sid, value in current.items():
            if self._last.get(sid) != value:
                changed[str(sid)] = [value[0], value[1]]
        for sid in self._last:
            if sid not in current:
                changed[str(sid)] = [0, 0]
        self._last = current
        traced, peak = tracemalloc.get_traced_memory()
        totals: Dict[str, Any] = {}
        if self.totals_source is not None:
            totals = self.totals_source.collect()["totals"]
        totals.update(traced_bytes=traced, peak_traced_bytes=peak)
        return {"stacks": new_stacks, "inuse": changed, "totals": totals}

    def stop(self, wait: float = 5.0) -> None:
        if self.totals_source is not None:  # its hooks sit on top of tracemalloc's
            self.totals_source.stop(wait)
            self.totals_source = None
        if self.owned and tracemalloc.is_tracing():
            tracemalloc.stop()
