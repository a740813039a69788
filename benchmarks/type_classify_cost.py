"""What naming the type of every live sample costs the target at a dump.

    .venv/bin/python benchmarks/type_classify_cost.py [--python 3.12] [--heap-mib 400]
        [--rate 4096] [--repeat 5]

A child interpreter runs the shim at ``--rate`` (default 4 KiB) while it builds a heap of
``--heap-mib`` MiB (default 400) of bytes objects, dicts and instances of a class, about
100,000 live samples at the defaults. Then it times, ``--repeat`` times each, what the
agent does when heapspy asks for the types (``heapspy_agent.object_types.classify``):

- ``gather``: every class reachable from ``object.__subclasses__()``, with their sizes;
- ``c``: the shim's pass over the live samples (``hs_classify_live``: the type check and
  the sums per (stack, type)), with the type set built;
- ``total``: both plus naming the types and shaping the rows (what the target pays,
  holding the GIL, per dump).

Prints figures (min, median and max over the repeats: on a shared machine the min is
the least disturbed); not a timed test. The agent does this
at dumps and for `top --by type` only, never per interval.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import log, pick_interpreters  # noqa: E402

CHILD = r"""
import json, statistics, sys, time
from heapspy_agent.shim import Shim
from heapspy_agent.object_types import classify, min_sizes, reachable_types

heap_mib, rate, repeat = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

class Order:
    __slots__ = ("id", "payload")
    def __init__(self, i):
        self.id = i
        self.payload = None

shim = Shim.load(sys.argv[4])
shim.start(rate, max_frames=16, seed=5)
keep = []
target = heap_mib << 20
held = 0
i = 0
while held < target:  # ~1 KiB a round: 512 B of bytes, a small dict, an instance
    keep.append((b"x" * 512 + str(i).encode(), {"i": i, "name": "n"}, Order(i)))
    held += 512 + 33 + 232 + 48 + 64 + 100
    i += 1
t = shim.totals()

def timed(fn):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}

types = reachable_types()
sizes = min_sizes(types)
out = {
    "python": sys.version.split()[0],
    "live_samples": t.live_samples,
    "live_sampled_bytes": t.live_sampled_bytes,
    "types": len(types),
    "gather": timed(lambda: min_sizes(reachable_types())),
    "c": timed(lambda: shim.classify_live(types, sizes)),
    "total": timed(lambda: classify(shim, set())),
    "rows": len(shim.classify_live(types, sizes)),
}
shim.stop()
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", action="append", default=[])
    parser.add_argument("--heap-mib", type=int, default=400)
    parser.add_argument("--rate", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        so = Path(tmp) / "_heapspy_shim.so"
        sources = [str(p) for p in sorted((ROOT / "Cargo-free").glob("*.c"))]
        subprocess.run(
            ["cc", "-O2", "-std=gnu11", "-fPIC", "-shared", "-fvisibility=hidden",
             "-I", str(ROOT / "Cargo-free"), "-o", str(so), *sources, "-lm", "-ldl"],
            check=True,
        )  # fmt: skip
        for interp in pick_interpreters(args.python or ["3.12"]):
            env = dict(os.environ, PYTHONPATH=str(ROOT / "agent"))
            env.pop("PYTHONMALLOC", None)
            proc = subprocess.run(
                interp.command("-c", CHILD, str(args.heap_mib), str(args.rate),
                               str(args.repeat), str(so)),
                capture_output=True, text=True, env=env, check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                log(f"{interp}: failed:\n{proc.stderr[-2000:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            ms = {
                k: (r[k]["min"] * 1e3, r[k]["median"] * 1e3, r[k]["max"] * 1e3)
                for k in ("gather", "c", "total")
            }
            log(
                f"{interp} (Python {r['python']}): {r['live_samples']:,} live samples "
                f"({r['live_sampled_bytes'] / 2**20:.1f} MiB sampled) at rate {args.rate}, "
                f"{r['types']:,} classes, {r['rows']:,} (stack, type) rows"
            )
            for key, (best, med, worst) in ms.items():
                log(f"  {key:6} min {best:7.1f} ms   median {med:7.1f} ms   max {worst:7.1f} ms")


if __name__ == "__main__":
    main()
