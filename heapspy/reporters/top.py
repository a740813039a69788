"""The screens of ``heapspy top`` and the end-of-session table of ``attach`` and ``demo``.

Both render ``TopRow``s: a ``TopView`` from a session of this process or from another one
over its control socket (``heapspy.top``), or the aggregator's rows at detach.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from heapspy.model import TopRow
from heapspy.printable import printable
from heapspy.reporters.base import Rendering
from heapspy.rss import format_breakdown, memory_of
from heapspy.runtime_stats import RuntimeStats
from heapspy.sampling import EXACT, SAMPLED, TOTALS
from heapspy.scaling import format_error, relative_error
from heapspy.top import TopView
from heapspy.units import format_bytes, size_text


def _error(value: int, variance: float | None) -> str:
    """The ``±95%`` cell; ``?`` when the session (an older heapspy) sent no variance."""
    text = "?" if variance is None else format_error(relative_error(value, variance))
    return f" {text:>5}"


@dataclass(frozen=True)
class TopTable(Rendering):
    """The end-of-session table of live bytes by function; ``sampled`` adds each
    estimate's 95% sampling error (``±95%``)."""

    rows: Sequence[TopRow]
    sampled: bool = False

    def text(self) -> str:
        return top_table(self.rows, self.sampled)


def top_table(rows: Sequence[TopRow], sampled: bool = False) -> str:
    if not rows:
        return "  (no live allocations recorded)"
    error = f" {'±95%':>5}" if sampled else ""
    lines = [f"  {'live bytes':>12}{error}  {'objects':>9}  function"]
    for r in rows:
        error = _error(r.inuse_bytes, r.inuse_bytes_var) if sampled else ""
        size = format_bytes(r.inuse_bytes)
        lines.append(f"  {size:>12}{error}  {r.inuse_objects:>9}  {printable(r.function)}")
    return "\n".join(lines)


def _signed(n: int) -> str:
    if n == 0:
        return "0"
    return ("+" if n > 0 else "-") + format_bytes(abs(n))


@dataclass(frozen=True)
class TopScreen(Rendering):
    """One refresh of ``heapspy top``: the target's numbers, then a line per function (the
    first ``shown``) with its growth since the first view and since the previous one. The
    views hold more functions than are shown, so that a function climbing into the
    table is compared with what it had, not called new."""

    pid: int
    view: TopView
    first: TopView
    prev: TopView | None
    order: str
    shown: int

    def text(self) -> str:
        return top_screen(self.pid, self.view, self.first, self.prev, self.order, self.shown)


def top_screen(
    pid: int, view: TopView, first: TopView, prev: TopView | None, order: str, shown: int
) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(view.time))
    how = {
        SAMPLED: f"sampled every {size_text(view.sampling.rate)}",
        EXACT: "exact (tracemalloc)",
        TOTALS: "totals only (no stacks at rate 0)",
    }[view.sampling.mode]
    rss = format_bytes(view.rss) if view.rss is not None else "?"
    lines = [
        f"heapspy top  pid {pid}  {when}  {how}  intervals {view.intervals}",
        f"RSS {rss}  live heap {format_bytes(view.heap)} ({_signed(view.heap - first.heap)} since "
        f"start, {_signed(view.heap - (prev or first).heap)} since last)",
        "",
    ]
    # the target's GC, threads and tasks go last: the table's place stays the same
    runtime = RuntimeStats.from_facts(view.runtime)
    footer = [runtime.line(), ""] if runtime is not None and runtime.line() else []
    memory = memory_of({"memory": view.memory})
    if memory is not None:  # where the rest of RSS is (refreshed every 10 s at most)
        footer += [*format_breakdown(memory), ""]
    if not view.rows:
        return "\n".join([*lines, "  (nothing recorded yet)", "", *footer])
    before = {r.function: r for r in first.rows}
    last = {r.function: r for r in (prev or first).rows}
    alloc = order == "alloc_space"
    head = "allocated" if alloc else "live"
    # growth has no error column: views of one session share their samples (as in diff)
    sampled = view.sampled
    error = f" {'±95%':>5}" if sampled else ""
    lines.append(
        f"  {head:>10}{error}  {'since start':>11}  {'since last':>10}  {'objects':>9}  "
        f"{view.by or 'function'}"
    )
    for r in view.rows[:shown]:
        value = r.alloc_bytes if alloc else r.inuse_bytes
        if sampled:
            error = _error(value, r.alloc_bytes_var if alloc else r.inuse_bytes_var)
        b0, b1 = before.get(r.function), last.get(r.function)
        v0 = (b0.alloc_bytes if alloc else b0.inuse_bytes) if b0 else None
        v1 = (b1.alloc_bytes if alloc else b1.inuse_bytes) if b1 else None
        objects = r.alloc_objects if alloc else r.inuse_objects
        lines.append(
            f"  {format_bytes(value):>10}{error}  "
            f"{_signed(value - v0) if v0 is not None else 'new':>11}  "
            f"{_signed(value - v1) if v1 is not None else 'new':>10}  {objects:>9}  "
            f"{printable(r.function)}"
        )
    return "\n".join([*lines, "", *footer])
