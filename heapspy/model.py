"""The frozen data model shared by the aggregator, the dump writer and the reports.

Stacks are tuples ordered root → leaf (outermost call first). Only the pprof writer,
whose format wants leaf first, reverses them.
"""

from __future__ import annotations

from dataclasses import dataclass

Bytes = int


@dataclass(frozen=True)
class Frame:
    function: str
    filename: str
    line: int
    # a native frame (--native-frames): a function of the library at ``filename`` (its
    # path in the target), named from its symbols; line 0. The pprof writer gives it that
    # library as its mapping, and the reader takes it back from there.
    native: bool = False


Stack = tuple[Frame, ...]

Labels = tuple[tuple[str, str], ...]
"""A sample's labels, pprof string labels: (key, value) pairs sorted by key, each key
once. Written into dumps (``go tool pprof -tags``, ``-tagfocus``) and grouped by with
``--by KEY``. The keys heapspy writes are ``LABEL_KEYS``."""

THREAD = "thread"  # the allocating thread's Python name (``tid N`` if it ended unseen)
THREAD_ID = "thread_id"  # its native id (decimal)
TASK = "task"  # the running asyncio task's name (Task.get_name()), where known
CORO = "coro"  # that task's coroutine, by qualified name
# the type of the sample's object (``module.Name``, builtins bare), named at the dump
# (heapspy_agent.object_types): on in-use samples only, a freed block has no type
TYPE = "type"
LABEL_KEYS: tuple[str, ...] = (THREAD, THREAD_ID, TASK, CORO, TYPE)
NO_LABEL = "(none)"  # what grouping by a label shows for samples without it


def label_value(labels: Labels, key: str) -> str | None:
    """The value of ``key`` in ``labels``, or None."""
    for name, value in labels:
        if name == key:
            return value
    return None


@dataclass(frozen=True)
class SiteCounts:
    """Counts for one stack, as observed: sampled counts are *not* upscaled here.

    ``alloc_*`` are cumulative since attach (including blocks already freed);
    ``inuse_*`` are what is live now.
    """

    alloc_objects: int = 0
    alloc_bytes: Bytes = 0
    inuse_objects: int = 0
    inuse_bytes: Bytes = 0
    # The shim's per-sample estimate of the truth (alloc_objects, alloc_bytes,
    # inuse_objects, inuse_bytes): each sample weighted 1/(1-exp(-size/rate)) at its own
    # size and the rate in force. That is Go's formula as Go applies it, per (stack, size)
    # bucket; the per-stack average used otherwise under-estimates stacks of mixed sizes.
    estimate: tuple[float, float, float, float] | None = None
    # who made these samples (``Labels``): a stack under two label sets is two sites
    labels: Labels = ()
    # The variances of those four estimates, summed by the shim over the samples at each
    # one's own rate (scaling.estimate_variance); None: computed from the estimate.
    variance: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class AllocTotals:
    """Exact totals counted for every allocation since attach, sampled or not."""

    allocated_bytes: Bytes = 0
    allocations: int = 0
    freed_bytes: Bytes | None = None  # unknown in sampled mode (unsampled frees have no size)
    frees: int | None = None
    # power-of-two size classes: key k counts allocations with 2**(k-1) < size <= 2**k
    size_classes: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class HeapProfile:
    """One heap snapshot, ready to be written as a pprof file.

    ``sampled`` sites were recorded with probability depending on ``rate`` and are
    upscaled by the writer with Go's formula; ``exact`` sites (tracemalloc mode, or
    blocks that extensions report with ``PyTraceMalloc_Track``) are never upscaled.
    ``rate`` is the mean number of bytes between samples; ``rate <= 1`` means exact.
    """

    rate: int
    time_ns: int
    duration_ns: int
    sampled: tuple[tuple[Stack, SiteCounts], ...] = ()
    exact: tuple[tuple[Stack, SiteCounts], ...] = ()
    comments: tuple[str, ...] = ()


@dataclass(frozen=True)
class TopRow:
    """One leaf function's share of the heap, as live views and end-of-session tables
    show it (estimated in sampled mode, exact in exact mode)."""

    function: str  # the leaf function, with file:line where it allocates
    inuse_bytes: int
    inuse_objects: int
    alloc_bytes: int  # since attach; exact mode: growth seen live between intervals
    alloc_objects: int
    # Sampling variance of the two byte estimates (scaling.sampling_variance, summed over
    # the function's stacks); 0 in exact mode, None from a session of an older heapspy.
    inuse_bytes_var: float | None = None
    alloc_bytes_var: float | None = None
