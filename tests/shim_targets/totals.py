"""Exact totals: a known number of allocations in size classes nothing else uses.

The same workload runs with sampling off (rate 0) and on (64 KiB): the exact counts must
not depend on sampling.
"""

import itertools

from _common import MiB, emit, load, mem_free, mem_malloc, mem_realloc, obj_free, obj_malloc

N_MEM, SIZE_MEM = 1000, 3_000_001  # class 22: 2 MiB < size <= 4 MiB
N_OBJ, SIZE_OBJ = 500, 5_000_000  # class 23: 4 MiB < size <= 8 MiB
N_RE, SIZES_RE = 200, (9_000_000, 10_000_000)  # reallocs into class 24: 8-16 MiB


def workload():
    for _ in itertools.repeat(None, N_MEM):
        mem_free(mem_malloc(SIZE_MEM))
    for _ in itertools.repeat(None, N_OBJ):
        obj_free(obj_malloc(SIZE_OBJ))
    # class boundaries: 2**26 is class 26, one byte more is class 27
    mem_free(mem_malloc(64 * MiB))
    mem_free(mem_malloc(64 * MiB + 1))
    # a realloc is a free and an allocation of the new size (at rate 0 on the fast path)
    p = mem_malloc(16)
    for i in range(N_RE):
        p = mem_realloc(p, SIZES_RE[i & 1])
    mem_free(p)


def run(shim, rate):
    shim.start(rate, seed=11)
    workload()
    t = shim.totals()
    assert shim.stop()
    return {
        "rate": rate,
        "mem_classes": list(t.mem.size_classes),
        "obj_classes": list(t.obj.size_classes),
        "mem_alloc_count": t.mem.alloc_count,
        "obj_alloc_count": t.obj.alloc_count,
        "mem_alloc_bytes": t.mem.alloc_bytes,
        "obj_alloc_bytes": t.obj.alloc_bytes,
        "mem_free_count": t.mem.free_count,
        "mem_realloc_count": t.mem.realloc_count,
        "obj_free_count": t.obj.free_count,
        "sampled_count": t.sampled_count,
        "sampled_bytes": t.sampled_bytes,
    }


def main():
    shim = load()
    runs = [run(shim, 0), run(shim, 64 * 1024)]
    shim.unload()
    emit({"runs": runs, "known": [N_MEM, SIZE_MEM, N_OBJ, SIZE_OBJ, N_RE]})


main()
