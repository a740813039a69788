"""After stop the shim holds nothing: code-object references are back to where they were,
the library unloads, nothing of it stays mapped, and the process keeps allocating."""

import gc
import sys

from _common import emit, load, maps_mention


def leaf():
    return [bytes(2000) for _ in range(5000)]


def middle():
    return leaf()


def main():
    shim = load()
    codes = [leaf.__code__, middle.__code__, main.__code__]
    gc.collect()
    before = [sys.getrefcount(c) for c in codes]
    shim.start(1024, seed=2)
    keep = middle()
    d = shim.drain()
    during = [sys.getrefcount(c) for c in codes]
    named = sorted({f.function for s in d.new_stacks for f in s.frames})
    del d
    stopped = shim.stop()
    after = [sys.getrefcount(c) for c in codes]
    totals_after_stop = shim.totals()
    path = shim.path
    mapped_before = maps_mention(path)
    shim.unload()
    mapped_after = maps_mention(path)
    del keep
    gc.collect()
    keep = [middle() for _ in range(5)]
    emit(
        {
            "before": before,
            "during": during,
            "after": after,
            "stopped": stopped,
            "named": named,
            "mapped_before": mapped_before,
            "mapped_after": mapped_after,
            "totals_state": totals_after_stop.state,
            "stacks_after_stop": totals_after_stop.stacks,
            "memory_after_stop": totals_after_stop.shim_memory,
            "alive": len(keep),
        }
    )


main()
