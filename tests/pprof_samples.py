"""The profiles the pprof tests share: frames, a small profile (the golden one), Go's
formula written out again, and a raw decoder; a plain module (see support.py)."""

from __future__ import annotations

import gzip
import math

from heapspy import profile_pb2 as pb
from heapspy.model import Frame, HeapProfile, SiteCounts

RATE = 512 * 1024

MAIN = Frame("main", "/app/app.py", 40)
SERVE = Frame("serve", "/app/app.py", 30)
LEAK = Frame("leak_cache", "/app/cache.py", 12)
LEAK_OTHER_LINE = Frame("leak_cache", "/app/cache.py", 17)
PARSE = Frame("parse", "/app/parse.py", 7)
TRACKED = Frame("numpy_empty", "/app/arrays.py", 3)


def small_profile() -> HeapProfile:
    """The golden profile: shared frames, one function on two lines, exact and sampled."""
    return HeapProfile(
        rate=RATE,
        time_ns=1_700_000_000_123_456_789,
        duration_ns=30_000_000_000,
        sampled=(
            ((MAIN, SERVE, LEAK), SiteCounts(40, 40 * 1024 * 1024, 38, 38 * 1024 * 1024)),
            ((MAIN, SERVE, LEAK_OTHER_LINE), SiteCounts(3, 3 * 4096, 1, 4096)),
            ((MAIN, PARSE), SiteCounts(7, 7 * 100, 0, 0)),
        ),
        exact=(((MAIN, TRACKED), SiteCounts(2, 2 * 8000, 2, 2 * 8000)),),
        comments=("heapspy 0.1.0", "pid 4242 rule rss>1GiB"),
    )


def go_scale(count: int, size: int, rate: int) -> tuple[int, int]:
    """Go's scaleHeapSample, written out again here so the test checks the writer."""
    if count == 0 or size == 0:
        return 0, 0
    if rate <= 1:
        return count, size
    scale = 1 / (1 - math.exp(-(size / count) / rate))
    return int(count * scale), int(size * scale)


def raw_message(data: bytes) -> pb.Profile:
    return pb.Profile.FromString(gzip.decompress(data))
