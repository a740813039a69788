"""NumPy array data goes through NumPy's own allocator handler, not the PyMem domains: with
the default handler hooked, retained arrays are estimated at their function, churn counts
as allocated only, reallocs and the zeroed path (whose calloc releases the GIL) are
counted, and stopping while other threads allocate big zeroed arrays leaves NumPy as it
was. argv: rate, cycles."""

import sys
import threading

import numpy as np

from _common import Profile, emit, load, maps_mention


def handler_name():
    core = getattr(np, "_core", None) or np.core
    return core.multiarray.get_handler_name()


def retain_small():
    return [np.ones(1000) for _ in range(8000)]  # 8000-byte buffers, 61 MiB  # LINE: small


def retain_zeros():
    return [np.zeros(1 << 20) for _ in range(8)]  # 8 MiB calloc'd buffers, 64 MiB


def churn():
    total = 0.0
    for _ in range(3000):
        total += float(np.empty(4000).sum())  # 32000-byte temporaries, freed at once
    return total


def grow():
    a = np.zeros(16)
    for n in range(32, 1 << 16, 32):
        a.resize(n, refcheck=False)  # PyDataMem_UserRENEW
    return a


def storm(stop):
    while not stop.is_set():
        np.zeros(1 << 19).sum()  # 4 MiB: calloc outside the GIL


def main():
    rate, cycles = int(sys.argv[1]), int(sys.argv[2])
    shim = load()
    shim.start(rate, max_frames=32, seed=11)
    why = shim.hook_numpy()
    hooked_name = handler_name()
    small = retain_small()
    zeros = retain_zeros()
    churn()
    grown = grow()
    prof = Profile(shim)
    prof.drain()
    t = prof.last.totals
    result = {
        "why": why,
        "numpy": np.__version__,
        "hooked": t.numpy_hooked,
        "handler_while_hooked": hooked_name,
        "truth_small": sum(a.nbytes for a in small),
        "truth_zeros": sum(a.nbytes for a in zeros),
        "truth_churn": 3000 * 32000,
        "small": prof.summary("retain_small", rate),
        "zeros": prof.summary("retain_zeros", rate),
        "churn": prof.summary("churn", rate),
        "numpy_domain": list(t.numpy[:4]),
        "obj_bytes": t.obj.alloc_bytes,
    }
    # np.ones/np.zeros/np.empty are NumPy's Python (or C) functions: attribute each
    # stack to the test function anywhere in it, as a reader of the profile would.
    by_caller = {}
    for sid, c in prof.counts.items():
        names = {f.function for f in prof.stacks[sid].frames}
        for fn in ("retain_small", "retain_zeros", "churn"):
            if fn in names:
                entry = by_caller.setdefault(fn, [0.0, 0.0, 0])
                entry[0] += c.est_live_bytes
                entry[1] += c.est_alloc_bytes
                entry[2] += c.live_count
    result["by_caller"] = by_caller
    del small, zeros, grown
    prof.drain()
    result["live_after_free"] = {
        fn: sum(c.live_bytes for sid, c in prof.counts.items()
                if fn in {f.function for f in prof.stacks[sid].frames})
        for fn in ("retain_small", "retain_zeros")
    }  # fmt: skip
    stopped = shim.stop()
    result["stopped"] = stopped
    result["handler_after_stop"] = handler_name()
    shim.unload()
    result["mapped_after_unload"] = maps_mention(shim.path)

    # Start/stop cycles while four threads make big zeroed arrays (our calloc hook runs
    # without the GIL inside NumPy's calloc), keeping arrays across sessions.
    stop = threading.Event()
    threads = [threading.Thread(target=storm, args=(stop,)) for _ in range(4)]
    for th in threads:
        th.start()
    kept = []
    unloaded = 0
    for i in range(cycles):
        shim = load()
        shim.start(rate, seed=100 + i)
        assert shim.hook_numpy() == ""
        kept.append(np.zeros(1 << 18))
        kept.append(np.ones(300))
        if len(kept) > 8:
            del kept[:2]  # arrays from earlier sessions freed under later ones
        assert shim.stop()
        shim.unload()
        unloaded += not maps_mention(shim.path)
    stop.set()
    for th in threads:
        th.join()
    del kept
    result["cycles_unloaded"] = unloaded
    result["handler_at_end"] = handler_name()
    result["works_after"] = float(np.arange(10).sum())
    emit(result)


if __name__ == "__main__":
    main()
