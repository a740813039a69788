"""Target for benchmarks/accuracy.py: retains known amounts at known functions.

    python accuracy_target.py CASES MIB [SEED]

CASES is a comma-separated list of the retaining functions below; each retains about
MIB MiB. The target prints ``READY``, waits until heapspy's agent thread has appeared
and for a ``go`` line on stdin (sent once ``Session.attach`` returned, i.e. once the
agent's hooks are in place: the thread appears before them), runs each case, prints
``DONE {json}`` with the truth per function, and idles until stdin closes.

Truth, per function, is what that function retains, counted as Python's allocators
were asked for it: ``sys.getsizeof`` of every retained object (header, GC header,
buffer, and a list's over-allocated slots) and of the list that holds them, which the
function grew by append. For each it also lists the allocator blocks (size -> count):
a bytearray, list or ndarray is two blocks (object + buffer; a NumPy array's buffer comes
from NumPy's allocator handler, which the shim hooks).
"""

import json
import random
import sys
import threading
import time

MIB = 1 << 20
EMPTY_BYTES = sys.getsizeof(b"")  # 33: header + the trailing NUL
EMPTY_STR = sys.getsizeof("")  # 49 on 3.11, 41 from 3.12 (compact ASCII)
EMPTY_TUPLE = sys.getsizeof(())  # header + GC header
EMPTY_LIST = sys.getsizeof([])  # header + GC header: the list object's own block
BYTEARRAY_HEAD = sys.getsizeof(bytearray())  # bytearray() has no buffer block yet


def large_blocks(total):
    """1 MiB bytearrays."""
    return [bytearray(MIB) for _ in range(max(1, total // MIB))]


def medium_blocks(total):
    """bytes objects of 1-16 KiB, log-uniform."""
    rng = random.Random(1)
    keep = []
    done = 0
    while done < total:
        size = int(1024 * 16.0 ** rng.random())
        keep.append(b"m" * (size - EMPTY_BYTES))
        done += size
    return keep


def small_objects(total):
    """bytes, str and tuples of 40-400 bytes, uniform, in turn."""
    rng = random.Random(2)
    keep = []
    done = 0
    i = 0
    while done < total:
        size = rng.randint(40, 400)
        kind = i % 3
        # at least 2 items: length 0 and 1 give cached singletons, not new objects
        if kind == 0:
            obj = b"s" * max(2, size - EMPTY_BYTES)
        elif kind == 1:
            obj = "s" * max(2, size - EMPTY_STR)
        else:
            obj = (None,) * max(2, (size - EMPTY_TUPLE) // 8)
        keep.append(obj)
        done += sys.getsizeof(obj)
        i += 1
    return keep


def appended_lists(total):
    """Lists grown one append at a time to 16-16384 items, log-uniform."""
    rng = random.Random(3)
    keep = []
    done = 0
    while done < total:
        n = int(16 * 1024.0 ** rng.random())
        items = []
        for _ in range(n):
            items.append(None)  # noqa: PERF401 - growth by append is the case measured
        keep.append(items)
        done += sys.getsizeof(items)
    return keep


def numpy_arrays(total):
    """float64 arrays of 4 KiB-1 MiB of data, log-uniform."""
    import numpy as np

    rng = random.Random(4)
    keep = []
    done = 0
    while done < total:
        nbytes = int(4096 * 256.0 ** rng.random()) // 8 * 8
        keep.append(np.full(nbytes // 8, 1.0))
        done += nbytes
    return keep


CASES = {
    f.__name__: f
    for f in (large_blocks, medium_blocks, small_objects, appended_lists, numpy_arrays)
}


def blocks(obj):
    """The allocator blocks of one object."""
    size = sys.getsizeof(obj)
    if isinstance(obj, bytearray):
        return [BYTEARRAY_HEAD, size - BYTEARRAY_HEAD]
    if isinstance(obj, list):
        return [EMPTY_LIST, size - EMPTY_LIST] if size > EMPTY_LIST else [size]
    nbytes = getattr(obj, "nbytes", None)
    if nbytes is not None and getattr(obj, "base", None) is None:  # an ndarray owning its data
        return [size - nbytes, nbytes]
    return [size]


def truth(keep):
    hist = {}
    for obj in [keep, *keep]:
        for b in blocks(obj):
            if b:
                hist[b] = hist.get(b, 0) + 1
    return {
        "bytes": sum(s * n for s, n in hist.items()),
        "objects": len(keep),
        "blocks": sorted(hist.items()),
    }


def main():
    cases = [c for c in sys.argv[1].split(",") if c]
    total = int(float(sys.argv[2]) * MIB)
    if "numpy_arrays" in cases:
        import numpy  # noqa: F401 - imported before heapspy attaches: only arrays count

    base = threading.active_count()
    print("READY", flush=True)
    while threading.active_count() == base:
        time.sleep(0.01)
    if sys.stdin.readline().strip() != "go":
        return
    kept = {}
    t0 = time.perf_counter()
    for name in cases:
        kept[name] = CASES[name](total)
    build = time.perf_counter() - t0
    result = {name: truth(keep) for name, keep in kept.items()}
    print("DONE", json.dumps({"build_s": build, "truth": result}), flush=True)
    del result  # only what the cases retain stays live
    sys.stdin.read()  # idle until the controller is done with us


if __name__ == "__main__":
    main()
