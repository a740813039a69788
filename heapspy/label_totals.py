"""Who allocated: the samples' figures per value of a label (thread, task, coroutine,
type: ``heapspy.model.LABEL_KEYS``; the agent names them, ``heapspy_agent.labels``) and
the shim's exact bytes per thread, as the limit rules (``heapspy.limits``), the sidecar
and ``heapspy status`` read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from heapspy.aggregate import Aggregator
from heapspy.model import CORO, TASK, THREAD, label_value


@dataclass(frozen=True)
class LabelTotals:
    """What the samples carrying one value of a label add up to (``by_label``):
    estimates in sampled mode (upscaled per sample, as the stacks'; their variances summed
    over the stacks, ``Site.live_variance``), exact in exact mode (where ``alloc_*`` only
    counts growth seen live between intervals)."""

    alloc_objects: float = 0.0
    alloc_bytes: float = 0.0  # allocated since attach (freed blocks included)
    live_objects: float = 0.0
    live_bytes: float = 0.0  # live now
    alloc_bytes_var: float = 0.0  # sampling variance of alloc_bytes (0 when exact)
    live_bytes_var: float = 0.0


@dataclass(frozen=True)
class ThreadAlloc:
    """Exact bytes one thread allocated since attach (every allocation, from the shim's
    per-thread counters; sampled and totals modes, and exact mode's totals shim)."""

    thread_id: int  # native id; 0: the threads beyond the shim's table (4096)
    allocated_bytes: int
    name: str  # its Python name when the agent saw it alive, else "tid N"


def by_label(agg: Aggregator, key: str) -> dict[str, LabelTotals]:
    """Per value of label ``key`` (``model.LABEL_KEYS``: thread, thread_id, task, coro, type),
    the samples' allocated and live totals; samples without that label are left out.

    ``by_label(agg, "task")["fetch-user"].alloc_bytes`` is what tasks named ``fetch-user``
    allocated since attach (tasks sharing a name add up; a Python Task's samples
    taken before the agent first saw it alive carry no ``task``: heapspy_agent.labels).
    """
    acc: dict[str, list[float]] = {}
    period = agg.sampling.period
    for labels, site in agg.all_parts():
        value = label_value(labels, key)
        if value is None or not (site.inuse_objects or site.alloc_objects):
            continue
        a_objs, a_size = site.allocated(period)
        objs, size = site.live(period)
        row = acc.setdefault(value, [0.0] * 6)
        row[0] += a_objs
        row[1] += a_size
        row[2] += objs
        row[3] += size
        row[4] += site.alloc_variance(period)
        row[5] += site.live_variance(period)
    return {value: LabelTotals(*row) for value, row in acc.items()}


def thread_alloc(agg: Aggregator) -> list[ThreadAlloc]:
    """Exact bytes allocated per thread since attach, most first (the agent's latest
    ``totals.thread_alloc``: its 256 most allocating threads)."""
    rows = agg.totals.get("thread_alloc") or []
    return [ThreadAlloc(int(tid), int(size), str(name)) for tid, size, name in rows]


def labels_summary(agg: Aggregator, n: int = 10) -> dict[str, Any]:
    """The sidecar's and status's ``labels``: per label key, its ``n`` values with the
    most live bytes, ``[value, alloc_bytes, live_bytes]`` (rounded estimates), and
    ``thread_alloc``: ``[native id, exact allocated bytes, name]``, most first, and
    ``agent_alloc``: what heapspy's agent thread allocated (not in ``thread_alloc``). In exact
    mode, ``split`` says that the thread and task figures are exact bytes split in
    proportion of samples (``heapspy.label_shares``)."""
    out: dict[str, Any] = {}
    for key in (THREAD, TASK, CORO):
        totals = by_label(agg, key)
        ranked = sorted(totals.items(), key=lambda kv: (-kv[1].live_bytes, kv[0]))
        out[key] = [[v, round(t.alloc_bytes), round(t.live_bytes)] for v, t in ranked[:n]]
    out["thread_alloc"] = [[t.thread_id, t.allocated_bytes, t.name] for t in thread_alloc(agg)[:n]]
    agent = agg.totals.get("agent_alloc")
    if agent:  # left out of thread_alloc: heapspy's own work in the target
        out["agent_alloc"] = agent
    note = agg.exact_split_note()
    if note:  # exact mode: how its thread and task figures were made
        out["split"] = note
    return out
