"""Sampled mode: the native shim records one allocation per ~``rate`` bytes, with stacks.

Per interval it hands over only what changed (new stacks once, then the counters of the
stacks that moved), so the work done inside the target follows the allocation activity,
not the size of the heap. Stacks that run through the agent's own files are the agent's
allocations, not the target's: they are left out.
"""

from typing import Any, Dict, List, Optional, Set

from heapspy_agent.shim import Shim, ShimError


class ShimCollector:
    mode = "sampled"

    def __init__(self, shim: Shim, rate: int, frames: int, exclude_dir: str) -> None:
        self.shim = shim
        self.frames = frames
        self.rate = rate
        self._exclude = exclude_dir.rstrip("/") + "/"
        self._own: Set[int] = set()
        self.owned = True
        self.notes: List[str] = []
        shim.start(rate, max_frames=frames)

    def set_rate(self, rate: int) -> None:
        self.shim.set_rate(rate)
        self.rate = rate

    def collect(self) -> Dict[str, Any]:
        drain = self.shim.drain()
        stacks = []
        for st in drain.new_stacks:
            if any(f.filename.startswith(self._exclude) for f in st.frames):
                self._own.add(st.stack_id)
                continue
            frames = [[f.function, f.filename, f.line] for f in st.frames]
            if not frames:
                frames = [["<no Python frame>", "", 0]]
            stacks.append({"id": st.stack_id, "frames": frames})
        inuse: Dict[str, List[int]] = {}
        alloc: Dict[str, List[int]] = {}
        est: Dict[str, List[float]] = {}
        for c in drain.changed:
            if c.stack_id in self._own:
                continue
            key = str(c.stack_id)
            inuse[key] = [c.live_count, c.live_bytes]
            alloc[key] = [c.alloc_count, c.alloc_bytes]
            est[key] = [c.est_alloc_count, c.est_alloc_bytes, c.est_live_count, c.est_live_bytes]
        t = drain.totals
        classes = [
            [k, a + b]
            for k, (a, b) in enumerate(zip(t.mem.size_classes, t.obj.size_classes))
            if a + b
        ]
        totals = {
            "allocated_bytes": t.mem.alloc_bytes + t.obj.alloc_bytes,
            "allocations": t.mem.alloc_count + t.obj.alloc_count,
            "frees": t.mem.free_count + t.obj.free_count,
            "reallocs": t.mem.realloc_count + t.obj.realloc_count,
            "size_classes": classes,
            "domains": {
                "mem": [t.mem.alloc_count, t.mem.alloc_bytes, t.mem.free_count],
                "obj": [t.obj.alloc_count, t.obj.alloc_bytes, t.obj.free_count],
            },
            "rate": t.rate,
            "sampled_count": t.sampled_count,
            "live_samples": t.live_samples,
            "dropped_samples": t.dropped_samples,
            "overflow_samples": t.overflow_samples,
            "stacks": t.stacks,
            "shim_memory": t.shim_memory,
        }
        return {"stacks": stacks, "inuse": inuse, "alloc": alloc, "est": est, "totals": totals}

    def stop(self) -> None:
        try:
            clean = self.shim.stop()
        except ShimError:
            clean = False
        if clean:
            self.shim.unload()


def load_shim(directory: str) -> "tuple[Optional[Shim], str]":
    """Load the shim heapspy placed beside the agent; (None, why) when it cannot."""
    import glob
    import os

    from heapspy_agent.shim import LIBRARY_GLOB

    found = sorted(glob.glob(os.path.join(directory, "heapspy_agent", LIBRARY_GLOB)))
    if not found:
        return None, "the sampling shim is not available (heapspy was installed without it)"
    try:
        return Shim.load(found[0]), ""
    except ShimError as exc:
        return None, "the sampling shim could not be loaded: %s" % exc
