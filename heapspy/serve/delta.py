"""Profiles as Go's HTTP handlers shape them: a delta over ``seconds=S``, and the
``allocs`` view that differs from ``heap`` only in its default sample type."""

from __future__ import annotations

import gzip

from heapspy import profile_pb2 as pb
from heapspy.model import HeapProfile, SiteCounts, Stack
from heapspy.pprof import decode_profile, encode_profile, gzip_bytes


def with_default_type(data: bytes, sample_type: str) -> bytes:
    """The same profile with another default sample type (``allocs`` → alloc_space)."""
    message = pb.Profile()
    message.ParseFromString(gzip.decompress(data))  # our own session's output
    strings = list(message.string_table)
    if sample_type not in strings:
        return data
    message.default_sample_type = strings.index(sample_type)
    return gzip_bytes(message.SerializeToString())


def delta(before: bytes, after: bytes, default_type: str = "inuse_space") -> bytes:
    """``after - before`` stack by stack, as Go's ``/debug/pprof/heap?seconds=S``: what
    was allocated in the window, and how the live heap changed (negative where it
    shrank). Values are already upscaled in both, so they subtract as they are."""
    old, new = decode_profile(before), decode_profile(after)
    values: dict[Stack, list[int]] = {}
    for sample in new.samples:
        row = values.setdefault(sample.stack, [0, 0, 0, 0])
        for i, v in enumerate(sample.values[:4]):
            row[i] += v
    for sample in old.samples:
        row = values.setdefault(sample.stack, [0, 0, 0, 0])
        for i, v in enumerate(sample.values[:4]):
            row[i] -= v
    sites = tuple(
        (stack, SiteCounts(row[0], row[1], row[2], row[3]))
        for stack, row in values.items()
        if any(row)
    )
    window = max(0, new.time_nanos - old.time_nanos)
    profile = HeapProfile(
        rate=max(new.period, 1),
        time_ns=new.time_nanos,
        duration_ns=window,
        exact=sites,
        comments=(
            *new.comments,
            f"delta profile over {window / 1e9:.1f} s (Go's /debug/pprof/heap?seconds=)",
        ),
    )
    data = encode_profile(profile)
    return data if default_type == "inuse_space" else with_default_type(data, default_type)
