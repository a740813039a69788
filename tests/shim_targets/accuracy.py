"""Known amounts retained at known functions, temporary churn at another: estimates vs truth.

argv: rate seed. Prints, per function, the shim's estimate, Go's per-stack estimate and
the truth computed from the objects themselves.
"""

import gc
import itertools
import sys

from _common import MiB, Profile, emit, load, marker_lines

RATE = int(sys.argv[1])
SEED = int(sys.argv[2])
RETAIN = 56 * MiB
CHURN = 200 * MiB


def retain_small():
    n = 1000
    count = RETAIN // (n + sys.getsizeof(b""))
    out = [None] * count
    for i in range(count):
        out[i] = b"\0" * n  # LINE: small
    return out


def retain_large():
    n = 256 * 1024
    out = [None] * (RETAIN // n)
    for i in range(len(out)):
        out[i] = b"\0" * n  # LINE: large
    return out


def retain_mixed():
    # Half the bytes in 1000-byte objects, half in 1 MiB ones, plus the list's own growing
    # buffer, all on one line: one stack with very different sizes.
    out = []
    sizes = [1000] * 1024 + [MiB]
    for _ in range(RETAIN // (2 * MiB)):
        for n in sizes:
            out.append(b"\0" * n)  # LINE: mixed  # noqa: PERF401 (a genexpr adds a frame)
    return out


def churn():
    n = 4096
    for _ in itertools.repeat(None, CHURN // n):
        b = b"\0" * n  # LINE: churn
    del b


def truth(objs):
    return sum(map(sys.getsizeof, objs))


def main():
    lines = marker_lines(__file__)
    shim = load()
    gc.collect()
    shim.start(RATE, max_frames=64, seed=SEED)
    prof = Profile(shim)
    small = retain_small()  # LINE: call_small
    large = retain_large()
    mixed = retain_mixed()
    churn()
    prof.drain()
    result = {
        "lines": lines,
        "rate": RATE,
        "small": dict(prof.summary("retain_small", RATE, lines["small"]), truth=truth(small)),
        "large": dict(prof.summary("retain_large", RATE, lines["large"]), truth=truth(large)),
        "mixed": dict(
            prof.summary("retain_mixed", RATE, lines["mixed"]),
            truth=truth(mixed) + sys.getsizeof(mixed) - sys.getsizeof([]),
        ),
        "churn": dict(
            prof.summary("churn", RATE, lines["churn"]),
            truth_alloc=(CHURN // 4096) * sys.getsizeof(b"\0" * 4096),
        ),
        "stacks_small": prof.stack_of("retain_small"),
    }
    # Frees reduce live bytes: drop the retained data and look again.
    del small, large, mixed
    gc.collect()
    prof.drain()
    result["after_free"] = {
        name: prof.summary(name, RATE)["live_bytes"]
        for name in ("retain_small", "retain_large", "retain_mixed")
    }
    totals = prof.last.totals if prof.last else None
    result["shim_memory"] = totals.shim_memory if totals else -1
    result["stacks"] = totals.stacks if totals else -1
    assert shim.stop()
    shim.unload()
    emit(result)


main()  # LINE: call_main
