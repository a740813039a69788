"""Every refusal gives a ShimError with its code; the shim still works afterwards."""

import sys

from heapspy_agent import shim as S

from _common import emit, load, maps_mention


def code_of(fn):
    try:
        fn()
    except S.ShimError as exc:
        return exc.code
    return "no error"


def subinterpreters():
    import importlib.util

    for name in ("_interpreters", "_xxsubinterpreters"):
        if importlib.util.find_spec(name) is not None:
            return importlib.import_module(name)
    return None


def subinterpreter_refusal(shim):
    """3.12+ may give a sub-interpreter its own GIL: refused while one exists."""
    mod = subinterpreters()
    if mod is None:
        return "no module"
    interp = mod.create()
    try:
        return code_of(lambda: shim.start(65536))
    finally:
        mod.destroy(interp)


def subinterpreter_sampling(shim):
    """Before 3.12 sub-interpreters share the GIL: their allocations are counted and
    sampled, without frames (their code objects are not ours to keep)."""
    mod = subinterpreters()
    interp = mod.create()
    shim.start(1)
    mod.run_string(interp, "x = [str(i) for i in range(1000)]\n")
    d = shim.drain()
    shim.set_rate(0)
    foreign = [[s.flags, len(s.frames)] for s in d.new_stacks if s.flags & S.STACK_FOREIGN]
    assert shim.stop()
    mod.destroy(interp)
    return foreign


def park(shim, out):
    """Benchmarks' park: hooks out (nothing counted), back in (counted), tables kept."""

    def allocs():
        t = shim.totals()
        return t.mem.alloc_count + t.obj.alloc_count

    before = allocs()
    shim.park(True)
    out["park_twice"] = code_of(lambda: shim.park(True))
    junk = [str(i) for i in range(10000)]
    parked = allocs() - before
    shim.park(False)
    out["unpark_twice"] = code_of(lambda: shim.park(False))
    junk = [str(i) for i in range(10000)]
    del junk
    return parked, allocs() - before - parked


def main():
    shim = load()
    out = {
        "free_threaded": code_of(lambda: shim.start(65536, free_threaded=True)),
        "stop_idle": code_of(shim.stop),
        "set_rate_idle": code_of(lambda: shim.set_rate(4096)),
        "bad_frames": code_of(lambda: shim.start(65536, max_frames=0)),
        "too_many_frames": code_of(lambda: shim.start(65536, max_frames=100000)),
        "missing_library": code_of(lambda: S.Shim.load("/nonexistent/_heapspy_shim.so")),
        "not_a_shim": code_of(lambda: S.Shim.load("libm.so.6")),
    }
    if sys.version_info >= (3, 12):
        out["subinterpreter"] = subinterpreter_refusal(shim)
    else:
        out["foreign"] = subinterpreter_sampling(shim)
    out["park_idle"] = code_of(lambda: shim.park(True))
    shim.start(65536)
    out["parked_allocs"], out["unparked_allocs"] = park(shim, out)
    out["twice"] = code_of(lambda: shim.start(65536))
    out["unload_running"] = code_of(shim.unload)
    out["stopped"] = shim.stop()
    shim.unload()
    out["after_unload"] = code_of(lambda: shim.start(65536))
    out["mapped_after_unload"] = maps_mention(shim.path)
    out["codes"] = {
        "FREE_THREADED": S.ERR_FREE_THREADED,
        "NOT_RUNNING": S.ERR_NOT_RUNNING,
        "ARG": S.ERR_ARG,
        "LOAD": S.ERR_LOAD,
        "SUBINTERP": S.ERR_SUBINTERP,
        "RUNNING": S.ERR_RUNNING,
    }
    emit(out)


main()
