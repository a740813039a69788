"""Sampled mode: the native shim records one allocation per ~``rate`` bytes, with stacks.

Per interval it hands over only what changed (new stacks once, then the counters of the
stacks that moved), so the work done inside the target follows the allocation activity,
not the size of the heap. Stacks that run through the agent's own files are the agent's
allocations, not the target's: they are left out.

Each stack comes with the id of its label set (``heapspy_agent.labels``: thread, task,
coroutine), and each label set is named once, in the collection that first reports it:
``{"labels": {"<id>": {"thread": ..., "thread_id": ..., "task": ..., "coro": [...]}}}``.
``totals.thread_alloc`` holds the exact bytes each thread allocated since attach,
``[[native id, bytes, name], ...]``, most first; the agent's own thread is left out of it
(its census and reports are not the target's work: they led the list while a census ran,
and a thread-alloc rule could fire on them) and sent apart, as ``totals.agent_alloc``.

After each collection the stacks with nothing live that have not changed for a few
intervals are evicted from the shim (their code objects released), and their ids sent
with the collection: what the agent holds in the target follows the live heap, not every
stack ever seen (code generated per request, as template engines make, would otherwise
pin every generated code object). heapspy keeps their cumulative figures.
"""

import glob
import math
import os
import threading
from typing import Any, Dict, List, Optional, Set, Tuple

from heapspy_agent import object_types
from heapspy_agent.labels import LabelNamer
from heapspy_agent.schema import (
    MAX_LIBRARIES,
    MAX_THREAD_ALLOC,
    MAX_TYPED_SITES,
    MAX_TYPES_PER_SITE,
    OTHER_TYPES,
    OVERFLOW_FUNCTION,
    SAMPLED,
    TOTALS,
    Sampling,
)
from heapspy_agent.shim import (
    LIBRARY_GLOB,
    NOT_IMPORTED,
    STACK_NATIVE,
    DomainTotals,
    NativeLibraries,
    Shim,
    ShimError,
)

NO_PYTHON_STACK = "[native, no Python stack]"

# Intervals a freed stack stays unchanged before it is evicted: a site that allocates
# again soon is not interned and sent again each time.
EVICT_AFTER = 2


def evict_after(idle_report: float, interval: float) -> int:
    """Drains a freed stack stays unchanged before it is evicted: EVICT_AFTER, or with
    quiet intervals one more than ``idle_report`` spans (a site that allocated once is
    then reported before it can go). An eviction is sent at once
    (quiet.py: evicted ids are reused, never merged across), so a site that allocates
    every few seconds was evicted and interned again between two reports: in an
    idle-ish worker's minute, 8 of its 12 frames were evictions (interval 1 s,
    idle_report 10 s)."""
    if idle_report <= 0 or interval <= 0:
        return EVICT_AFTER
    return max(EVICT_AFTER, int(math.ceil(idle_report / interval)) + 1)


class ShimCollector:
    def __init__(
        self,
        shim: Shim,
        rate: int,
        frames: int,
        exclude_dir: str,
        native: bool = False,
        native_frames: bool = False,
    ) -> None:
        self.shim = shim
        self.frames = frames
        self.rate = rate
        # made on the agent's thread; collections may run on another (at exit)
        self._agent_thread = threading.get_native_id()
        self.evict_after = EVICT_AFTER  # the agent sets it from idle_report
        self._exclude = exclude_dir.rstrip("/") + "/"
        self._own: Set[int] = set()
        self.owned = True
        self.notes: List[str] = []
        shim.start(rate, max_frames=frames)
        self.namer = LabelNamer(shim)
        self.namer.refresh(tasks=bool(rate))
        # NumPy's array data bypasses the PyMem domains; hook its default handler now, or
        # at a later interval if the target imports NumPy after we attached.
        self.numpy = shim.hook_numpy()
        if self.numpy and self.numpy != NOT_IMPORTED:
            self.notes.append("NumPy array data is not counted: %s" % self.numpy)
        # Native allocations: the RAW domain and the libraries' malloc & co.
        self.native = False
        self._native_sent: Optional[Dict[str, Any]] = None
        if native:  # at rate 0 too: exact totals of the native domains, no samples
            try:
                shim.native_start(frames=native_frames)
                self.native = True
            except ShimError as exc:
                self.notes.append("native allocations are not sampled: %s" % exc)
            else:
                self.notes.extend(shim.native_libraries().notes)

    def sampling(self) -> Sampling:
        """What this collector does: sampled at ``rate``, or every allocation counted
        without stacks at rate 0."""
        return Sampling(SAMPLED if self.rate else TOTALS, self.rate, self.frames)

    def set_rate(self, rate: int) -> None:
        self.shim.set_rate(rate)
        self.rate = rate

    def collect(self) -> Dict[str, Any]:
        if self.numpy == NOT_IMPORTED:
            # Arrays made between NumPy's import and this interval are not seen.
            self.numpy = self.shim.hook_numpy()
        if self.native:
            self.shim.native_rescan()  # libraries loaded since the last interval
        drain = self.shim.drain()
        stacks = []
        for st in drain.new_stacks:
            if any(f.filename.startswith(self._exclude) for f in st.frames):
                self._own.add(st.stack_id)
                continue
            self._own.discard(st.stack_id)  # an evicted id of ours, reused
            frames = [[f.function, f.filename, f.line] for f in st.frames]
            if st.overflow:
                frames = [[OVERFLOW_FUNCTION, "", 0]]  # heapspy adds how many samples
            elif not frames:
                name = NO_PYTHON_STACK if st.flags & STACK_NATIVE else "<no Python frame>"
                frames = [[name, "", 0]]
            stack = {"id": st.stack_id, "frames": frames, "labels": st.label}
            if st.native:  # return addresses, leaf first: heapspy names them
                stack["native"] = list(self.shim.native_frames(st.native))
            stacks.append(stack)
        labels = {
            str(ls.label_id): self.namer.name(ls.thread_id, ls.task, ls.coro, ls.name)
            for ls in drain.new_labels
        }
        inuse: Dict[str, List[int]] = {}
        alloc: Dict[str, List[int]] = {}
        est: Dict[str, List[float]] = {}
        var: Dict[str, List[float]] = {}
        for c in drain.changed:
            if c.stack_id in self._own:
                continue
            key = str(c.stack_id)
            inuse[key] = [c.live_count, c.live_bytes]
            alloc[key] = [c.alloc_count, c.alloc_bytes]
            est[key] = [c.est_alloc_count, c.est_alloc_bytes, c.est_live_count, c.est_live_bytes]
            # never below 0: frees subtract what samples added, which may leave a residue
            var[key] = [
                max(0.0, v)
                for v in (c.var_alloc_count, c.var_alloc_bytes, c.var_live_count, c.var_live_bytes)
            ]
        evicted = []
        gone = self.shim.evict(self.evict_after) if self.rate else []  # rate 0: no stacks
        for sid in gone:
            if sid in self._own:
                self._own.discard(sid)
            else:
                evicted.append(sid)
        t = drain.totals
        own = self._agent_thread
        doms: Tuple[DomainTotals, ...] = (t.mem, t.obj, t.numpy)
        classes = [
            [k, sum(counts)] for k, counts in enumerate(zip(*(d.size_classes for d in doms)))
        ]
        domains = {
            "mem": [t.mem.alloc_count, t.mem.alloc_bytes, t.mem.free_count],
            "obj": [t.obj.alloc_count, t.obj.alloc_bytes, t.obj.free_count],
            "numpy": [t.numpy.alloc_count, t.numpy.alloc_bytes, t.numpy.free_count],
        }
        nt = self.shim.native_totals() if self.native else None
        if nt is not None:  # size classes: Python's domains only (native keeps none)
            doms = doms + (nt.raw, nt.malloc, nt.mmap)
            domains["raw"] = [nt.raw.alloc_count, nt.raw.alloc_bytes, nt.raw.free_count]
            domains["native"] = [nt.malloc.alloc_count, nt.malloc.alloc_bytes, nt.malloc.free_count]
            domains["mmap"] = [nt.mmap.alloc_count, nt.mmap.alloc_bytes, nt.mmap.free_count]
        totals: Dict[str, Any] = {
            "allocated_bytes": sum(d.alloc_bytes for d in doms),
            "allocations": sum(d.alloc_count for d in doms),
            "frees": sum(d.free_count for d in doms),
            "reallocs": sum(d.realloc_count for d in doms),
            "size_classes": [c for c in classes if c[1]],
            "domains": domains,
            "numpy": "hooked" if t.numpy_hooked else self.numpy,
            "rate": t.rate,
            "sampled_count": t.sampled_count,
            "live_samples": t.live_samples,
            "dropped_samples": t.dropped_samples,
            "overflow_samples": t.overflow_samples,
            "stacks": t.stacks - len(gone),  # in the shim's table now
            "evicted_stacks": t.evicted_stacks + len(gone),
            "shim_memory": t.shim_memory + (nt.shim_memory if nt is not None else 0),
            "thread_alloc": self.namer.thread_alloc(t.threads, own)[:MAX_THREAD_ALLOC],
            "agent_alloc": sum(n for tid, n in t.threads if tid == own),
        }
        if nt is not None:
            totals["sampled_count"] += nt.sampled_count
            totals["live_samples"] += nt.live_samples
            totals["dropped_samples"] += nt.dropped_samples
            status = self._native_status(self.shim.native_libraries())
            if status != self._native_sent:  # sent when it changes (aggregator keeps it)
                self._native_sent = status
                totals["native"] = status
        # the tasks alive now, for the samples of the next interval (none at rate 0)
        self.namer.refresh(tasks=bool(self.rate))
        body = {
            "stacks": stacks,
            "inuse": inuse,
            "alloc": alloc,
            "est": est,
            "var": var,
            "evicted": evicted,
            "totals": totals,
        }
        if labels:
            body["labels"] = labels
        return body

    def types(self) -> Dict[str, Any]:
        """The live samples of each stack by type (heapspy asks at a dump, and for `top
        --by type`): the reply's ``types`` and ``complete`` (schema.py). One pass over the
        live samples in C; the target's own stacks only."""
        if self.native:
            # Native samples live in their own map, which the classification does not
            # walk: a split by type would drop them from their sites (a complete reply
            # zeroes the sites it does not list). No types with --native, for now.
            return {"types": {}, "complete": False}
        by_stack = object_types.classify(self.shim, self._own)
        complete = len(by_stack) <= MAX_TYPED_SITES
        if not complete:  # keep the stacks holding the most
            ranked = sorted(by_stack.items(), key=lambda kv: -sum(r[4] for r in kv[1]))
            by_stack = dict(ranked[:MAX_TYPED_SITES])
        for sid, rows in by_stack.items():
            if len(rows) > MAX_TYPES_PER_SITE:
                rows.sort(key=lambda r: -r[4])
                rest = rows[MAX_TYPES_PER_SITE - 1 :]
                other = (
                    OTHER_TYPES,
                    sum(r[1] for r in rest),
                    sum(r[2] for r in rest),
                    sum(r[3] for r in rest),
                    sum(r[4] for r in rest),
                )
                by_stack[sid] = rows[: MAX_TYPES_PER_SITE - 1] + [other]
        return {"types": by_stack, "complete": complete}

    @staticmethod
    def _native_status(libs: NativeLibraries) -> Dict[str, Any]:
        return {
            "redirected": [path for path, _ in libs.redirected[:MAX_LIBRARIES]],
            "skipped": [[path, why] for path, why in libs.skipped[:MAX_LIBRARIES]],
            "more": max(0, len(libs.redirected) - MAX_LIBRARIES)
            + max(0, len(libs.skipped) - MAX_LIBRARIES),
            "notes": libs.notes[:8],
        }

    def stop(self, wait: float = 5.0) -> None:
        """Stop, and unload the library unless something still runs in it (then it stays
        loaded: harmless, its hooks are out). ``wait``: see Shim.unload."""
        self.stop_shim(self.shim, wait)

    @staticmethod
    def stop_shim(shim: Shim, wait: float = 5.0) -> None:
        try:
            if shim.stop():
                shim.unload(wait)
        except ShimError:
            pass


def load_shim(directory: str) -> "tuple[Optional[Shim], str]":
    """Load the shim heapspy placed beside the agent; (None, why) when it cannot."""
    found = sorted(glob.glob(os.path.join(directory, "heapspy_agent", LIBRARY_GLOB)))
    if not found:
        return None, "the sampling shim is not available (heapspy was installed without it)"
    try:
        return Shim.load(found[0]), ""
    except ShimError as exc:
        return None, "the sampling shim could not be loaded: %s" % exc
