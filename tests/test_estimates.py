"""The shim's per-sample estimates go into dumps as they are; raw counts only label them."""

from __future__ import annotations

from heapspy.model import Frame, HeapProfile, SiteCounts
from heapspy.pprof import decode_profile, encode_profile


def test_estimate_is_written_as_is_and_raw_counts_are_scaled_otherwise() -> None:
    mixed = (Frame("main", "/a.py", 1), Frame("mixed", "/a.py", 5))
    plain = (Frame("main", "/a.py", 1), Frame("plain", "/a.py", 9))
    est = (10.4, 3_000_000.9, 4.2, 2_000_000.2)
    profile = HeapProfile(
        rate=512 * 1024,
        time_ns=1,
        duration_ns=1,
        sampled=(
            (mixed, SiteCounts(3, 2_100_000, 2, 2_000_000, estimate=est)),
            (plain, SiteCounts(1, 1024, 1, 1024)),
        ),
    )
    decoded = decode_profile(encode_profile(profile))
    by_leaf = {s.stack[-1].function: s.values for s in decoded.samples}
    assert tuple(by_leaf["mixed"]) == (10, 3_000_000, 4, 2_000_000)
    # Go's average formula for one 1 KiB sample at 512 KiB: 1/(1-exp(-1/512)) ~ 512.5
    assert by_leaf["plain"][0] == 512 and 524_000 < by_leaf["plain"][1] < 525_300
