"""What one session tells a scraper: its figures as plain JSON, and its current profile.

These run inside the session's process when a control request asks for them
(``heapspy/session.py`` dispatches ``metrics`` and ``profile`` here), so the HTTP side,
which may live in another process (the daemon), never touches a session's objects.
"""

from __future__ import annotations

import base64
import math
from typing import TYPE_CHECKING, Any

from heapspy.pprof import encode_profile
from heapspy.scaling import sampling_variance

if TYPE_CHECKING:
    from heapspy.session import Session


def live_heap_error(session: Session) -> float:
    """Half-width of the 95 % interval of the live heap estimate (0 when exact)."""
    agg = session.aggregator
    if not agg.sampling.estimates:
        return 0.0
    rate = agg.sampling.period
    variance = 0.0
    for site in agg.sites.values():
        if site.exact:
            continue
        objects, nbytes = site.live(rate)
        variance += sampling_variance(objects, nbytes, rate)[1]
    return 1.96 * math.sqrt(variance)


def metrics_of(session: Session) -> dict[str, Any]:
    """The figures ``/metrics`` exposes for one worker (None: not known)."""
    agg = session.aggregator
    last = agg.series[-1] if agg.series else None
    totals = agg.alloc_totals()
    facts = agg.facts
    dumps: dict[str, int] = {}
    for rule in session.dump_rules:
        dumps[rule] = dumps.get(rule, 0) + 1
    memcg = session.memcg.state if session.memcg is not None else None
    return {
        "pid": session.target.pid,
        "watch": session.config.watch,
        "mode": agg.sampling.mode,
        "rate": agg.sampling.rate,
        "started": agg.started,
        "rss": last.rss if last else None,
        "fds": last.fds if last else None,
        "live_heap": agg.heap_estimate(),
        "live_heap_err95": live_heap_error(session),
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
        "cgroup_working_set": memcg.working_set if memcg else None,
        "cgroup_usage": memcg.usage if memcg else None,
        "cgroup_limit": memcg.limit if memcg else None,
        "cgroup_oom_kills": memcg.events.get("oom_kill") if memcg else None,
        "psi_some_avg10": memcg.psi_some if memcg else None,
    }


def profile_of(session: Session) -> dict[str, Any]:
    """The current heap profile, gzipped pprof, base64 for the JSON control channel.

    Encoding 10,000 stacks takes a few hundred ms of heapspy's CPU, and the profile only
    changes when the agent reports (once an interval): scrapes within one interval
    (several scrapers, a retry) share one encoding."""
    agg = session.aggregator
    key = (agg.intervals, agg.sampling, len(agg.sites))
    cached = session.served_profile
    if cached is None or cached[0] != key:
        data = encode_profile(agg.profile(("heapspy live profile",)))
        cached = session.served_profile = (key, base64.b64encode(data).decode("ascii"))
    return {"ok": True, "profile": cached[1]}
