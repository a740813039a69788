"""Every allocation sampled (rate 1): the shim's own allocations must pass straight through.

argv: shim|none. The workload's result is the same with and without the shim: raising
and catching exceptions (allocations while an error is set), generators, deep recursion
(truncated stacks at max_frames=8), threads, and more stacks than max_stacks (overflow).
"""

import hashlib
import sys
import threading

from _common import Profile, emit, load


def recurse(n):
    if n == 0:
        return [str(i) for i in range(50)]
    return recurse(n - 1)


def gen(n):
    for i in range(n):
        yield {"i": i, "s": "x" * (i % 50)}


def failing(i):
    if i % 3 == 0:
        raise ValueError(f"bad {i}")
    return [i] * (i % 7)


def workload():
    h = hashlib.sha256()
    for i in range(3000):
        try:
            h.update(repr(failing(i)).encode())
        except ValueError as exc:  # noqa: PERF203 - raising is the point
            h.update(str(exc).encode())
    h.update(repr(list(gen(2000))).encode())
    h.update(repr(recurse(40)).encode())
    # More distinct stacks than max_stacks: 100 functions, each its own code object.
    ns = {}
    for k in range(100):
        exec(f"def f{k}():\n    return [str(i) * {k} for i in range(20)]\n", ns)
        h.update(repr(ns[f"f{k}"]()).encode())
    results = [None] * 3

    def worker(k):
        results[k] = sum(len(str(j)) for j in range(20000 + k))

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    h.update(repr(results).encode())
    return h.hexdigest()


def main():
    if sys.argv[1] == "none":
        emit({"digest": workload()})
        return
    shim = load()
    shim.start(1, max_frames=8, max_stacks=64, seed=9)
    prof = Profile(shim)
    digest = workload()
    prof.drain()
    t = prof.last.totals
    flags = [s.flags for s in prof.stacks.values()]
    depths = [len(s.frames) for s in prof.stacks.values()]
    assert shim.stop()
    shim.unload()
    emit(
        {
            "digest": digest,
            "sampled": t.sampled_count,
            "allocs": t.mem.alloc_count + t.obj.alloc_count,
            "size_0_or_1": t.mem.size_classes[0] + t.obj.size_classes[0],
            "stacks": t.stacks,
            "overflow_samples": t.overflow_samples,
            "flags": sorted(set(flags)),
            "max_depth": max(depths),
            "stack0": [prof.stacks[0].flags, len(prof.stacks[0].frames)],
        }
    )


main()
