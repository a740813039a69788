"""First figure for the sampling shim's cost: the same allocation-heavy workloads with the
shim off and on, alternating in one process, printing throughput ratios (on / off).

    python benchmarks/shim_overhead.py [--rate 512KiB] [--rounds 7] [--shim PATH]

Not a timed test and not the pyperformance run the issue asks for (that is later work):
a quick check that sampling at the default rate stays cheap. Runs on Python 3.8+.
"""

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "agent"))

from heapspy_agent.shim import Shim  # noqa: E402


def parse_size(text):
    units = {"kib": 1 << 10, "mib": 1 << 20, "k": 1 << 10, "m": 1 << 20}
    t = text.strip().lower()
    for suffix, factor in units.items():
        if t.endswith(suffix):
            return int(float(t[: -len(suffix)]) * factor)
    return int(t)


class Node:
    def __init__(self, value, children):
        self.value = value
        self.children = children


def tree(depth):
    if depth == 0:
        return Node(0, [])
    return Node(depth, [tree(depth - 1) for _ in range(3)])


def walk(node):
    return node.value + sum(walk(c) for c in node.children)


DOC = {
    "users": [
        {"id": i, "name": f"user{i}", "tags": ["a", "b", str(i)], "score": i * 1.5}
        for i in range(300)
    ]
}


def json_roundtrip():
    for _ in range(20):
        json.loads(json.dumps(DOC))


def objects():
    for _ in range(10):
        walk(tree(6))


def strings_and_dicts():
    for i in range(3000):
        d = {str(j): "x" * (j % 40) for j in range(20)}
        "".join(d.values()).split("x")
        del d
        [i] * (i % 100)


def deepcopy():
    for _ in range(8):
        copy.deepcopy(DOC)


WORKLOADS = [json_roundtrip, objects, strings_and_dicts, deepcopy]


def timed(fn, seconds):
    """Calls per CPU second of fn over about `seconds` (CPU time: robust to a busy host)."""
    n = 0
    start = time.process_time()
    while True:
        fn()
        n += 1
        elapsed = time.process_time() - start
        if elapsed >= seconds:
            return n / elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", default="512KiB", help="sampling rate, e.g. 512KiB, 64KiB")
    ap.add_argument("--rounds", type=int, default=7, help="off/on pairs per workload")
    ap.add_argument("--seconds", type=float, default=0.3, help="length of one phase")
    ap.add_argument("--shim", default=None, help="library path (default: the built one)")
    args = ap.parse_args()
    rate = parse_size(args.rate)
    shim = Shim.load(args.shim)
    version = sys.version.split()[0]
    print(f"Python {version}, shim {shim.path}, rate {rate} bytes, {args.rounds} rounds")
    ratios = []
    for fn in WORKLOADS:
        fn()  # warm up
        pairs = []
        for _ in range(args.rounds):
            off = timed(fn, args.seconds)
            shim.start(rate)
            on = timed(fn, args.seconds)
            samples = shim.totals().sampled_count
            shim.stop()
            pairs.append(on / off)
        ratio = statistics.median(pairs)
        ratios.append(ratio)
        print(
            f"  {fn.__name__:18s} on/off {ratio:.3f}  (min {min(pairs):.3f}, "
            f"max {max(pairs):.3f}; {samples} samples in the last phase)"
        )
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"  {'geometric mean':18s} on/off {geo:.3f}")
    shim.unload()


if __name__ == "__main__":
    main()
