"""Time the pprof writer on a large heap: 100,000 distinct stacks about 20 frames deep.

Run: ``python benchmarks/pprof_write.py [--stacks N] [--depth D]``. Prints the protobuf
backend in use (upb, the fast default since protobuf 4.21, or pure python), build,
serialize and gzip times, file size, and the time to decode the file again. The stacks
share frames the way real programs do (a few thousand functions), so interning is
exercised as well as raw volume.
"""

from __future__ import annotations

import argparse
import gzip
import random
import statistics
import time
from typing import Callable

from google.protobuf import __version__ as protobuf_version
from google.protobuf.internal import api_implementation

from heapspy.model import Frame, HeapProfile, SiteCounts, Stack
from heapspy.pprof import build_profile, decode_profile, encode_profile, gzip_bytes


def make_profile(stacks: int, depth: int, seed: int = 1) -> HeapProfile:
    rng = random.Random(seed)
    files = [f"/srv/app/pkg{index // 20}/module{index}.py" for index in range(200)]
    frames = [
        Frame(f"function_{index}", files[index % len(files)], 1 + (index * 7) % 900)
        for index in range(5000)
    ]
    seen: set[Stack] = set()
    sites: list[tuple[Stack, SiteCounts]] = []
    while len(sites) < stacks:
        stack = tuple(rng.choice(frames) for _ in range(depth + rng.randint(-3, 3)))
        if stack in seen:
            continue
        seen.add(stack)
        objects = rng.randint(1, 50)
        size = objects * rng.choice((32, 64, 1024, 65536))
        sites.append((stack, SiteCounts(objects, size, objects // 2, size // 2)))
    return HeapProfile(
        rate=512 * 1024,
        time_ns=1_700_000_000_000_000_000,
        duration_ns=60_000_000_000,
        sampled=tuple(sites),
        comments=("benchmark",),
    )


def _best_of(runs: int, action: Callable[[], object]) -> tuple[float, float]:
    """Fastest and median wall time of ``runs`` calls (the machine may be shared)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stacks", type=int, default=100_000)
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    profile = make_profile(args.stacks, args.depth)
    print(f"protobuf {protobuf_version}, backend {api_implementation.Type()}")
    print(f"{args.stacks:,} distinct stacks, depth {args.depth} +- 3, best/median of {args.runs}")

    message = build_profile(profile)
    raw = message.SerializeToString()
    build = _best_of(args.runs, lambda: build_profile(profile))
    serialize = _best_of(args.runs, message.SerializeToString)
    compress = _best_of(args.runs, lambda: gzip_bytes(raw))
    data = encode_profile(profile)
    encode = _best_of(args.runs, lambda: encode_profile(profile))
    decode = _best_of(args.runs, lambda: decode_profile(data))
    for name, (best, median) in (
        ("build message", build),
        ("serialize", serialize),
        ("gzip", compress),
        ("encode_profile (all three)", encode),
        ("decode_profile", decode),
    ):
        print(f"  {name:<28} {best:6.3f} s  (median {median:.3f} s)")
    print(f"  serialized {len(raw):,} bytes, gzipped file {len(data):,} bytes")
    for level in (1, 9):
        size = len(gzip.compress(raw, compresslevel=level, mtime=0))
        print(f"  (gzip level {level} would give {size:,} bytes)")


if __name__ == "__main__":
    main()
