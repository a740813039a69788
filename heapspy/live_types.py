"""The types of the live samples (sampled mode): the agent names the type of every live
sample (``heapspy_agent.object_types``), each dump splits its stacks' ``inuse_*`` by
type (the pprof label ``type``), and ``top --by type`` ranks them.

Classifying visits every live sample in the target, so it runs at each dump and, for the
live view, at most every TYPES_EVERY seconds; the answer holds until a site changes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from heapspy_agent.schema import SAMPLED, Sampling

from heapspy.channel import AgentCall
from heapspy.heap_sites import Site
from heapspy.model import TYPE, Labels

log = logging.getLogger("heapspy")

TYPES_EVERY = 5.0  # seconds between classifications of the live samples for `top --by type`
TYPES_TIMEOUT = 30.0  # a few hundred ms per 100,000 live samples (benchmarks/type_classify_cost.py)


class TypeClassifier:
    """When the session last had the live samples classified, and asking for it."""

    def __init__(self) -> None:
        self.at = 0.0  # unix time of the last classification, 0: none yet

    def classify(
        self,
        call: AgentCall,
        sampling: Sampling,
        sites: dict[int, Site],
        lock: threading.Lock | None = None,
    ) -> float | None:
        """Have the agent name the type of every live sample and fold the answer into
        the aggregator's ``sites``, for the next dump or view. Returns what it cost the
        target in seconds, None when it could not be done (not sampled mode, or the agent
        said why). ``lock``: held while ``sites`` change (the session's data lock: other
        threads may read them meanwhile)."""
        if sampling.mode != SAMPLED:
            return None
        reply = call("types", timeout=TYPES_TIMEOUT)
        if not reply.get("ok"):
            log.info("no types for this dump: %s", reply.get("error"))
            return None
        with lock or contextlib.nullcontext():
            apply_types(sites, reply.get("types", {}), bool(reply.get("complete")))
        self.at = time.time()
        return float(reply.get("seconds", 0.0))

    def due(self) -> bool:
        """Whether the live view should have the samples classified again."""
        return time.time() - self.at >= TYPES_EVERY


def apply_types(sites: dict[int, Site], types: dict[str, list[Any]], complete: bool) -> None:
    """Fold in a checked ``types`` reply: each listed site's live samples by type, at
    the moment the agent classified them. The site's live values become their sums
    (the same samples, read a moment later than the last interval's), so a dump
    splits each stack's ``inuse_*`` by type without changing its totals. ``complete``:
    every site with live samples is listed, so the others hold none now. A site that
    changes afterwards drops its split (``Aggregator.apply``) until the next classification."""
    listed: set[int] = set()
    for key, rows in types.items():
        site = sites.get(int(key))
        if site is None or site.exact:
            continue
        listed.add(int(key))
        site.inuse_objects = int(sum(r[1] for r in rows))
        site.inuse_bytes = int(sum(r[2] for r in rows))
        a_n, a_b = site.estimate[:2] if site.estimate else (0.0, 0.0)
        live_n, live_b = sum(float(r[3]) for r in rows), sum(float(r[4]) for r in rows)
        site.estimate = (a_n, a_b, live_n, live_b)
        site.types = tuple(
            (str(r[0]), int(r[1]), int(r[2]), float(r[3]), float(r[4])) for r in rows if r[0]
        )
    if not complete:
        return
    for sid, site in sites.items():
        if sid not in listed and not site.exact and site.inuse_objects:
            site.inuse_objects = site.inuse_bytes = 0
            if site.estimate is not None:
                site.estimate = (*site.estimate[:2], 0.0, 0.0)
            site.types = ()


def split_by_type(site: Site, labels: Labels) -> list[tuple[Labels, Site]]:
    """A site as the dump shows it: one part with its labels, allocations and the
    live samples that hold no object (buffers, item arrays) or were not classified,
    then one part per type of its live samples with the label ``type`` added (live
    values only: a freed block has no type). The parts' values sum to the site's."""
    if not site.types:
        return [(labels, site)]
    typed_n = sum(t[1] for t in site.types)
    typed_b = sum(t[2] for t in site.types)
    rest_n = max(0, site.inuse_objects - typed_n)
    est = site.estimate or (0.0, 0.0, 0.0, 0.0)
    rest_en = max(0.0, est[2] - sum(t[3] for t in site.types)) if rest_n else 0.0
    rest_eb = max(0.0, est[3] - sum(t[4] for t in site.types)) if rest_n else 0.0
    # The live variances are the site's, shared out as its estimated live objects and
    # bytes are (the types reply has none of its own; for blocks small beside the rate
    # a part's bytes variance is about rate x its bytes, whatever its type).
    var = site.variance

    def share(objects: float, nbytes: float) -> tuple[float, float] | None:
        if var is None:
            return None
        return (
            var[2] * objects / est[2] if est[2] else 0.0,
            var[3] * nbytes / est[3] if est[3] else 0.0,
        )

    rest_var = share(rest_en, rest_eb)
    rest = Site(
        site.stack,
        site.exact,
        rest_n,
        max(0, site.inuse_bytes - typed_b),
        site.alloc_objects,
        site.alloc_bytes,
        (est[0], est[1], rest_en, rest_eb),
        site.label_set,
        variance=None if var is None or rest_var is None else (var[0], var[1], *rest_var),
    )
    out = [(labels, rest)]
    for name, n, b, en, eb in site.types:
        part_var = share(en, eb)
        typed = Site(
            site.stack,
            site.exact,
            n,
            b,
            0,
            0,
            (0.0, 0.0, en, eb),
            site.label_set,
            variance=None if part_var is None else (0.0, 0.0, *part_var),
        )
        out.append((tuple(sorted((*labels, (TYPE, name)))), typed))
    return out
