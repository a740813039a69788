"""What one session tells a scraper: its figures as plain JSON, and its current profile.

These run inside the session's process when a control request asks for them
(``heapspy/session.py`` dispatches ``metrics`` and ``profile`` here), so the HTTP side,
which may live in another process (the daemon), never touches a session's objects.
They take the figures they need, not the session: this module does not import it.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any

from heapspy.aggregate import Aggregator
from heapspy.oomwatch import CgroupWatch
from heapspy.pprof import encode_profile
from heapspy.scaling import Z_95


def live_heap_error(agg: Aggregator) -> float:
    """Half-width of the 95 % interval of the live heap estimate (0 when exact)."""
    if not agg.sampling.estimates:
        return 0.0
    rate = agg.sampling.period
    variance = sum(site.live_variance(rate) for site in agg.sites.values())
    return Z_95 * math.sqrt(variance)


def metrics_of(
    agg: Aggregator,
    pid: int,
    watch: str,
    dump_rules: Sequence[str],
    memcg: CgroupWatch | None,
) -> dict[str, Any]:
    """The figures ``/metrics`` exposes for one worker (None: not known): ``watch`` is
    the daemon's watch that chose it, ``dump_rules`` the rule of each dump written."""
    last = agg.series[-1] if agg.series else None
    totals = agg.alloc_totals()
    facts = agg.facts
    dumps: dict[str, int] = {}
    for rule in dump_rules:
        dumps[rule] = dumps.get(rule, 0) + 1
    state = memcg.state if memcg is not None else None
    return {
        "pid": pid,
        "watch": watch,
        "mode": agg.sampling.mode,
        "rate": agg.sampling.rate,
        "started": agg.started,
        "rss": last.rss if last else None,
        "fds": last.fds if last else None,
        "live_heap": agg.heap_estimate(),
        "live_heap_err95": live_heap_error(agg),
        "allocated_bytes": totals.allocated_bytes if totals else None,
        "allocations": totals.allocations if totals else None,
        "freed_bytes": totals.freed_bytes if totals else None,
        "frees": totals.frees if totals else None,
        "gc_collections": list(facts.get("gc_collections") or []),
        "gc_collected": list(facts.get("gc_collected") or []),
        "gc_uncollectable": list(facts.get("gc_uncollectable") or []),
        "gc_seconds": facts.get("gc_seconds"),
        "asyncio_tasks": list(facts.get("asyncio_tasks") or []),
        "threads": facts.get("threads"),
        "intervals": agg.intervals,
        "dumps": dumps,
        "cgroup_working_set": state.working_set if state else None,
        "cgroup_usage": state.usage if state else None,
        "cgroup_limit": state.limit if state else None,
        "cgroup_oom_kills": state.events.get("oom_kill") if state else None,
        "psi_some_avg10": state.psi_some if state else None,
    }


class ServedProfile:
    """The current heap profile, gzipped pprof.

    Encoding 10,000 stacks takes a few hundred ms of heapspy's CPU, and the profile only
    changes when the agent reports (once an interval): scrapes within one interval
    (several scrapers, a retry) share one encoding, kept here by the session."""

    def __init__(self) -> None:
        self.cached: tuple[tuple[Any, ...], bytes] | None = None

    def encoded(self, agg: Aggregator) -> bytes:
        """The profile of ``agg`` now, encoded once per state of its data."""
        key = (agg.intervals, agg.sampling, len(agg.sites))
        cached = self.cached
        if cached is None or cached[0] != key:
            data = encode_profile(agg.profile(("heapspy live profile",)))
            cached = self.cached = (key, data)
        return cached[1]

    def reply(self, agg: Aggregator) -> dict[str, Any]:
        """The control socket's reply (base64: it travels in JSON)."""
        return {"ok": True, "profile": base64.b64encode(self.encoded(agg)).decode("ascii")}
