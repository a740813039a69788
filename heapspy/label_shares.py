"""Exact mode's thread and task labels: each exact stack's bytes split in proportion of
the labels on the samples of the same frames.

tracemalloc's tracebacks hold file and line only: no thread, no task. The shim hooked on
top of tracemalloc samples beside it (``heapspy_agent.exact``), and its samples carry
``thread``, ``thread_id`` and ``task`` as in sampled mode; the session keeps them in an
aggregator of their own (``Aggregator.labelled``). A stack that tracemalloc reports with
N bytes live is shown as one part per label set its samples carry, N split in proportion
of those samples' estimated live bytes (of their allocated bytes when none is live), in
whole bytes and objects that add up to N exactly. Stacks are matched by their frames'
file and line, which both sides record. A stack that no sample has seen keeps its exact
labels only (``coro``): ``--by thread`` shows it as ``(none)``.
"""

from __future__ import annotations

from collections.abc import Iterable

from heapspy.heap_sites import Site
from heapspy.model import TASK, THREAD, THREAD_ID, Labels, Stack

SPLIT_KEYS = (THREAD, THREAD_ID, TASK)  # the labels exact mode takes from the samples

FramesKey = tuple[tuple[str, int], ...]
Shares = dict[FramesKey, list[tuple[Labels, float, float]]]
"""Per stack (file and line of each frame): the label sets its samples carry, with the
estimated bytes they hold live and have allocated (``label_shares``)."""


def frames_key(stack: Stack) -> FramesKey:
    return tuple((f.filename, f.line) for f in stack if not f.native)


def label_shares(parts: Iterable[tuple[Labels, Site]], period: int) -> Shares:
    """The thread and task labels of the samples, per stack, from the label samples'
    sites (``Aggregator.labelled``'s ``all_parts``)."""
    acc: dict[FramesKey, dict[Labels, list[float]]] = {}
    for labels, site in parts:
        own = tuple((k, v) for k, v in labels if k in SPLIT_KEYS)
        if not own:
            continue
        row = acc.setdefault(frames_key(site.stack), {}).setdefault(own, [0.0, 0.0])
        row[0] += site.live(period)[1]
        row[1] += site.allocated(period)[1]
    return {
        key: [(labels, live, alloc) for labels, (live, alloc) in sorted(sets.items())]
        for key, sets in acc.items()
    }


def split_by_shares(site: Site, labels: Labels, shares: Shares) -> list[tuple[Labels, Site]]:
    """An exact site as the dump shows it: one part per label set of its stack's
    samples, its exact figures split in proportion (whole units, summing to the site's);
    the site as it is when no sample of its stack holds or held anything."""
    found = shares.get(frames_key(site.stack))
    if not found:
        return [(labels, site)]
    weights = [live for _, live, _ in found]
    if not sum(weights):
        weights = [alloc for _, _, alloc in found]
        if not sum(weights):
            return [(labels, site)]
    columns: list[list[int]] = []
    for objects, nbytes in (
        (site.inuse_objects, site.inuse_bytes),
        (site.alloc_objects, site.alloc_bytes),
    ):
        counts = apportion(objects, weights)
        # bytes only where objects are: a part of 0 objects and some bytes is no sample
        held = [w if n else 0.0 for w, n in zip(weights, counts)]
        columns += [counts, apportion(nbytes, held if any(held) else weights)]
    kept = tuple((k, v) for k, v in labels if k not in SPLIT_KEYS)
    out = []
    for i, (extra, _, _) in enumerate(found):
        part = Site(
            site.stack,
            site.exact,
            columns[0][i],
            columns[1][i],
            columns[2][i],
            columns[3][i],
            label_set=site.label_set,
        )
        out.append((tuple(sorted((*kept, *extra))), part))
    return out


def apportion(total: int, weights: list[float]) -> list[int]:
    """``total`` split in proportion of ``weights`` (not negative, not all zero) in whole
    units that sum to it exactly: each part is the step between rounded running totals."""
    whole = sum(weights)
    out = []
    running = 0.0
    previous = 0
    for i, w in enumerate(weights):
        running += w
        upto = total if i == len(weights) - 1 else min(total, round(total * running / whole))
        out.append(upto - previous)
        previous = upto
    return out
