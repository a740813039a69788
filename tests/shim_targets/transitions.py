"""realloc's four sampled/unsampled transitions and the edge cases, made deterministic.

Rate 1 samples every allocation and rate 0 none, so each step's outcome is certain. The
blocks are whole MiB; the ctypes calls' own small objects (sampled too at rate 1, on the
same line) stay far below 1 MiB, so live bytes // MiB counts our blocks exactly.
"""

import ctypes
import itertools

from _common import (
    MiB,
    Profile,
    emit,
    load,
    mem_calloc,
    mem_free,
    mem_malloc,
    mem_realloc,
)

NEVER, ALWAYS = 0, 1


class Allocator(ctypes.Structure):  # PyMemAllocatorEx
    _fields_ = [
        ("ctx", ctypes.c_void_p),
        ("malloc", ctypes.c_void_p),
        ("calloc", ctypes.c_void_p),
        ("realloc", ctypes.c_void_p),
        ("free", ctypes.c_void_p),
    ]


def installed_calloc():
    """The MEM domain's calloc as installed (ours), callable with the GIL held."""
    get = ctypes.pythonapi.PyMem_GetAllocator
    get.restype = None
    get.argtypes = [ctypes.c_int, ctypes.POINTER(Allocator)]
    a = Allocator()
    get(1, ctypes.byref(a))
    proto = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t)
    return a.ctx, proto(a.calloc)


def transitions(shim, prof, steps):
    def step(name):
        prof.drain()
        cs = prof.where("transitions")
        live = sum(c.live_bytes for c in cs)
        t = prof.last.totals
        steps.append(
            {
                "step": name,
                "live_mib": live // MiB,
                "rest": live % MiB,
                "classes": list(t.mem.size_classes[20:24]),
                "realloc_count": t.mem.realloc_count,
                "sampled_count": t.sampled_count,
                "class0": t.mem.size_classes[0],
            }
        )

    step("start")
    p = mem_malloc(1 * MiB)
    step("malloc unsampled")
    shim.set_rate(ALWAYS)
    p = mem_realloc(p, 2 * MiB)
    step("unsampled->sampled")
    p = mem_realloc(p, 3 * MiB)
    step("sampled->sampled")
    shim.set_rate(NEVER)
    p = mem_realloc(p, 4 * MiB)
    step("sampled->unsampled")
    p = mem_realloc(p, 5 * MiB)
    step("unsampled->unsampled")
    mem_free(p)
    shim.set_rate(ALWAYS)
    q = mem_realloc(None, 1 * MiB)
    step("realloc(NULL)")
    r = mem_realloc(q, 1 << 62)
    assert r is None, "a 4 EiB realloc succeeded"
    step("failed realloc")
    mem_free(q)
    step("free sampled")
    z = mem_malloc(0)
    assert z
    step("malloc(0)")
    mem_free(z)
    before = shim.totals()
    for _ in itertools.repeat(None, 1000):
        mem_free(mem_malloc(0))
    after = shim.totals()
    allocs = after.mem.alloc_count + after.obj.alloc_count
    allocs -= before.mem.alloc_count + before.obj.alloc_count
    steps.append(
        {
            "step": "1000 x malloc(0) at rate 1",
            "not_sampled": allocs - (after.sampled_count - before.sampled_count),
        }
    )
    c = mem_calloc(3, MiB)
    step("calloc sampled")
    mem_free(c)
    step("free calloc")
    # nelem * elsize wraps to 8: CPython's own PyMem_Calloc refuses before the hooks, but
    # whoever calls the hook directly must not have a wrapped size counted or sampled.
    shim.set_rate(NEVER)
    before = shim.totals().mem
    ctx, calloc = installed_calloc()
    for _ in itertools.repeat(None, 1000):
        w = calloc(ctx, (1 << 61) + 1, 8)
        if w:
            mem_free(w)
    after = shim.totals().mem
    steps.append(
        {
            "step": "calloc overflow",
            "class3": after.size_classes[3] - before.size_classes[3],
            "alloc_count": after.alloc_count - before.alloc_count,
        }
    )


def main():
    shim = load()
    shim.start(NEVER, seed=3)
    prof = Profile(shim)
    steps = []
    transitions(shim, prof, steps)
    assert shim.stop()
    shim.unload()
    emit({"steps": steps})


main()
