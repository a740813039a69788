"""Exact mode: every allocation recorded by tracemalloc (``--rate 1``, and the fallback).

tracemalloc only keeps live blocks and knows frames by file and line, so this collector
reports live bytes per stack with empty function names; heapspy names the frames from
the source on its own side, never in the target. Of the labels (``heapspy_agent.labels``)
only ``coro`` can be found in a traceback: each stack carries a label set holding just
that, ``{"coro": ["", file, line]}``.

``thread`` and ``task`` cannot: a traceback holds file and line only, and labelling
every allocation would be a lookup on each. So the shim, hooked on top of tracemalloc for
the exact totals, also samples (every ``LABEL_RATE`` bytes, as sampled mode does) and
its samples carry those labels. Each collection hands them over as a second body,
``labelled`` (a sampled collection: ``heapspy_agent.sampled``), and heapspy splits each
exact stack's bytes in proportion of the labels on the samples of the same frames
(``heapspy.label_shares``).
"""

import tracemalloc
from typing import Any, Dict, List, Set, Tuple

from heapspy_agent.labels import anchor_lines
from heapspy_agent.schema import EXACT, Sampling

FrameKey = Tuple[str, int]

# Bytes between the label samples taken beside tracemalloc: sampled mode's default. A
# stack holding 50 MiB has ~100 of them to split it by (each thread's share within ~10 %,
# a 5 MiB one ~30 %). 64 KiB would split small stacks finer, but each collection then
# drains 8 times the samples: on tests/targets/labelled_service.py (4 threads, tasks
# made per loop turn) the agent's collection took 0.12 s of CPU instead of 0.05-0.09 s,
# where 512 KiB stays within that (benchmarks/exact_label_cost.py: neither adds anything
# measurable to the allocations).
LABEL_RATE = 512 * 1024


class TracemallocCollector:
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
        # The shim hooked on top of tracemalloc: it counts every allocation, and its
        # samples (at LABEL_RATE) carry the thread and task labels tracebacks lack.
        self.totals_source = totals_source
        self._stack_ids: Dict[Tuple[FrameKey, ...], int] = {}
        self._last: Dict[int, Tuple[int, int]] = {}
        self._anchors: Set[FrameKey] = set()  # lines of asyncio's task steps
        self._label_ids: Dict[FrameKey, int] = {}  # a coroutine's frame -> label set

    def sampling(self) -> Sampling:
        return Sampling(EXACT, 1, self.frames)

    def _label(self, key: Tuple[FrameKey, ...], labels: Dict[str, Any]) -> int:
        """The label set of a traceback (oldest first): its coroutine, the frame right
        after the innermost anchor line; 0 when there is none."""
        for i in range(len(key) - 2, -1, -1):
            if key[i] in self._anchors:
                coro = key[i + 1]
                lid = self._label_ids.get(coro)
                if lid is None:
                    lid = self._label_ids[coro] = len(self._label_ids) + 1
                    labels[str(lid)] = {"coro": ["", coro[0], coro[1]]}
                return lid
        return 0

    def collect(self) -> Dict[str, Any]:
        if not self._anchors:
            self._anchors = set(anchor_lines())  # once the target has imported asyncio
        labels: Dict[str, Any] = {}
        new_stacks: List[Dict[str, Any]] = []
        current: Dict[int, Tuple[int, int]] = {}
        own_dir, own_file = self._exclude
        for count, size, key in _group_by_traceback():
            if any(fn.startswith(own_dir) or fn == own_file for fn, _ in key):
                continue
            sid = self._stack_ids.get(key)
            if sid is None:
                sid = len(self._stack_ids) + 1
                self._stack_ids[key] = sid
                frames = [["", fn, ln] for fn, ln in key]
                new_stacks.append({"id": sid, "frames": frames, "labels": self._label(key, labels)})
            old_count, old_size = current.get(sid, (0, 0))
            current[sid] = (old_count + count, old_size + size)
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
        labelled: Dict[str, Any] = {}
        if self.totals_source is not None:
            labelled = self.totals_source.collect()
            totals = labelled.pop("totals")
        totals.update(traced_bytes=traced, peak_traced_bytes=peak)
        body = {"stacks": new_stacks, "inuse": changed, "totals": totals}
        if labels:
            body["labels"] = labels
        if labelled.get("stacks") or labelled.get("inuse") or labelled.get("evicted"):
            labelled["totals"] = {"rate": totals.get("rate", 0)}
            body["labelled"] = labelled  # sent in frames of its own, before this one
        return body

    def stop(self, wait: float = 5.0) -> None:
        if self.totals_source is not None:  # its hooks sit on top of tracemalloc's
            self.totals_source.stop(wait)
            self.totals_source = None
        if self.owned and tracemalloc.is_tracing():
            tracemalloc.stop()


def _group_by_traceback() -> List[Tuple[int, int, Tuple[FrameKey, ...]]]:
    """(blocks, bytes, frames oldest first) per distinct traceback of the live blocks.

    ``take_snapshot().statistics()`` builds a Trace and a Traceback object per block:
    8.6 s of CPU, holding the GIL, for a million blocks at 64 frames (3.11). Grouping
    what ``_get_traces`` (the snapshot's source) returns takes 1.0 s, if the loop
    allocates nothing per block: tracemalloc traces this thread too, and a new int per
    block (``id()``, ``count += 1``) costs a traceback capture each (6.2 s). So blocks
    are grouped under their traceback tuple itself (hashing it allocates nothing) and
    their sizes kept in a list per group, summed at the end. Raw frames are most recent
    first.
    """
    get_traces = getattr(tracemalloc, "_get_traces", None)
    if get_traces is None:  # in every CPython 3.8-3.14; kept so a change cannot break us
        stats = tracemalloc.take_snapshot().statistics("traceback")
        return [
            (st.count, st.size, tuple((f.filename, f.lineno) for f in st.traceback)) for st in stats
        ]
    groups: Dict[Tuple[FrameKey, ...], List[int]] = {}
    for trace in get_traces():
        sizes = groups.get(trace[2])
        if sizes is None:
            sizes = groups[trace[2]] = []
        sizes.append(trace[1])
    return [(len(sizes), sum(sizes), tb[::-1]) for tb, sizes in groups.items()]
