"""Native allocations: the RAW domain, a C library's malloc & co through its GOT, ctypes'
dlsym, threads without the GIL, attach/detach cycles under a storm, fork.

argv: the test library (tests/native_lib/leak.c built), a late-loaded copy of it, the
JSON list of its GOT entries' offsets (from its relocations), the number of cycles.
"""

import ctypes
import json
import os
import sys
import time

from _common import emit, load, marker_lines

LIB, LATE, OFFSETS, CYCLES = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
RATE = 64 * 1024

api = ctypes.pythonapi
for name, res, args in (
    ("PyMem_RawMalloc", ctypes.c_void_p, [ctypes.c_size_t]),
    ("PyMem_RawCalloc", ctypes.c_void_p, [ctypes.c_size_t, ctypes.c_size_t]),
    ("PyMem_RawRealloc", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t]),
    ("PyMem_RawFree", None, [ctypes.c_void_p]),
    ("PyMem_Malloc", ctypes.c_void_p, [ctypes.c_size_t]),
    ("PyMem_Calloc", ctypes.c_void_p, [ctypes.c_size_t, ctypes.c_size_t]),
    ("PyMem_Realloc", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t]),
    ("PyMem_Free", None, [ctypes.c_void_p]),
    ("PyObject_Malloc", ctypes.c_void_p, [ctypes.c_size_t]),
    ("PyObject_Free", None, [ctypes.c_void_p]),
):
    getattr(api, name).restype = res
    getattr(api, name).argtypes = args


def library(path):
    lib = ctypes.CDLL(path)
    lib.leak.restype = ctypes.c_void_p
    lib.leak.argtypes = [ctypes.c_size_t]
    lib.each_function.argtypes = [ctypes.c_size_t]
    lib.map_unmap.argtypes = [ctypes.c_size_t]
    lib.malloc_entry.restype = ctypes.c_void_p
    lib.storm.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t]
    lib.storm_start.argtypes = [ctypes.c_int, ctypes.c_size_t]
    return lib


def base_of(path):
    real = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[5] == real and int(parts[2], 16) == 0:
                return int(parts[0].split("-")[0], 16)
    raise RuntimeError(path + " is not mapped")


def got(path):
    base = base_of(path)
    return [ctypes.c_uint64.from_address(base + off).value for off in OFFSETS]


def delta(a, b):
    return [b.alloc_count - a.alloc_count, b.alloc_bytes - a.alloc_bytes,
            b.free_count - a.free_count, b.realloc_count - a.realloc_count]  # fmt: skip


def main():
    out = {}
    lib = library(LIB)
    original = got(LIB)
    original_entry = lib.malloc_entry()
    shim = load()
    shim.start(RATE, seed=5)
    shim.native_start()
    out["during_changed"] = [a != b for a, b in zip(original, got(LIB))]
    out["entry_hooked"] = lib.malloc_entry() != original_entry
    late = library(LATE)  # loaded after the start: covered from the next rescan
    shim.native_rescan()
    libs = shim.native_libraries()
    redirected = [os.path.realpath(p) for p, _ in libs.redirected]
    out["redirected"] = [os.path.realpath(LIB) in redirected, os.path.realpath(LATE) in redirected]
    out["skipped"] = dict(libs.skipped)

    # how forwarded calls are told apart: 1 by where they return to (learnt at the start)
    out["raw_mode"] = [shim._c().hs_native_raw_mode()]

    def forwarded(n):
        for _ in range(n):  # every way pymalloc forwards to RAW
            api.PyMem_Free(api.PyMem_Malloc(3_000_001))
            api.PyObject_Free(api.PyObject_Malloc(700))
            api.PyMem_Free(api.PyMem_Calloc(3, 1000))
            api.PyMem_Free(api.PyMem_Malloc(0))
            p = api.PyMem_Realloc(api.PyMem_Malloc(16), 5000)  # a pool block grows past it
            p = api.PyMem_Realloc(p, 90_000)
            api.PyMem_Free(api.PyMem_Realloc(p, 8))

    t0 = shim.native_totals()
    forwarded(200)
    t1 = shim.native_totals()
    out["raw_forwarded"] = delta(t0.raw, t1.raw)
    # a RAW hook installed over ours (tracemalloc) makes every return address its own:
    # from the next read on, forwarded calls are marked instead
    import tracemalloc

    tracemalloc.start()
    shim.drain()
    t0 = shim.native_totals()
    forwarded(20)
    t1 = shim.native_totals()
    tracemalloc.stop()  # frees its tables through RAW: not in the next count
    out["raw_forwarded_under_tracemalloc"] = delta(t0.raw, t1.raw)
    out["raw_mode"].append(shim._c().hs_native_raw_mode())
    t1 = shim.native_totals()
    for _ in range(1000):
        p = api.PyMem_RawMalloc(70_001)
        p = api.PyMem_RawRealloc(p, 90_001)
        api.PyMem_RawFree(p)
        api.PyMem_RawFree(api.PyMem_RawCalloc(7, 1001))
    t2 = shim.native_totals()
    out["raw_direct"] = delta(t1.raw, t2.raw)

    for _ in range(500):
        late.leak(100_000)
    t3 = shim.native_totals()
    out["late_leak"] = delta(t2.malloc, t3.malloc)
    for _ in range(100):
        lib.each_function(4096)
    lib.map_unmap(1 << 20)
    t4 = shim.native_totals()
    out["each_function"] = delta(t3.malloc, t4.malloc)
    out["mmap"] = delta(t3.mmap, t4.mmap)
    # ctypes: a pointer from dlsym, no GOT involved; looked up after the start (a function
    # ctypes found before it keeps the C library's address: not seen)
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    for _ in range(1000):
        libc.free(libc.malloc(77_777))
    t5 = shim.native_totals()
    out["ctypes_libc"] = delta(t4.malloc, t5.malloc)
    out["storm_threads"] = lib.storm(4, 2000, 1000)
    t6 = shim.native_totals()
    out["storm"] = delta(t5.malloc, t6.malloc)

    for _ in range(2000):
        lib.leak(50_000)  # LINE: leak
    t7 = shim.native_totals()
    out["leak"] = delta(t6.malloc, t7.malloc)
    drain = shim.drain()
    lines = marker_lines(__file__)
    ids = {
        st.stack_id for st in drain.new_stacks if st.frames and st.frames[-1].line == lines["leak"]
    }
    out["leak_sites"] = [
        [c.live_count, c.live_bytes, c.est_live_count, c.est_live_bytes]
        for c in drain.changed
        if c.stack_id in ids
    ]
    nt = shim.native_totals()
    out["nogil_samples"] = nt.nogil_samples
    out["threads"] = nt.threads
    # a rate change reaches every thread's countdown: none at rate 0, some after
    before = shim.native_totals().sampled_count
    shim.set_rate(0)
    for _ in range(300):
        lib.leak(100_000)
    at_zero = shim.native_totals().sampled_count
    shim.set_rate(RATE)
    for _ in range(300):
        lib.leak(100_000)
    out["rate_change_samples"] = [at_zero - before, shim.native_totals().sampled_count - at_zero]
    lib.release_all()
    late.release_all()

    pid = os.fork()  # a child forked while native mode runs switches it off and goes on
    if pid == 0:
        try:
            lib.storm(2, 500, 3000)
            for _ in range(100):
                lib.leak(200_000)
            lib.release_all()
            os._exit(0)
        except BaseException:
            os._exit(3)
    out["fork_child"] = os.waitpid(pid, 0)[1]

    out["stop"] = shim.stop()
    out["restored"] = got(LIB) == original and lib.malloc_entry() == original_entry

    # attach/detach cycles while threads without the GIL allocate
    lib.storm_start(4, 3000)
    restored = 0
    for _ in range(CYCLES):
        shim.start(RATE)
        shim.native_start()
        time.sleep(0.002)  # the storm runs through the hooks
        shim.drain()
        shim.stop()
        restored += got(LIB) == original
    lib.storm_stop()
    out["cycles_restored"] = [restored, CYCLES]
    shim.unload()  # pinned: stays loaded, its hooks pass through
    lib.storm(2, 200, 1000)
    out["after_unload"] = got(LIB) == original
    emit(out)


main()
