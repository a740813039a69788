"""Quiet intervals: a scheduled collection that found nothing live changed is not sent
at once, but held back and merged into the next one (``idle_report``, off by default).

Every collection still runs each interval (the shim's buffers must be drained, and the
label tables refreshed), but a daemon watching many idle workers would otherwise wake for
each one's frame every second only to learn that allocations came and went. So a
scheduled collection's SAMPLES body is held when nothing live moved since the last frame
sent, and goes out, merged with what was held, when something does or ``idle_report``
seconds after the last frame sent:

- a site's live figures (``inuse``, the live parts of ``est``) differ from those last
  sent, or a stack was evicted (ids may come back as other stacks: never merged across);
- the shim dropped samples, or the merged frame would leave site entries out;
- the thread or task counts, or the thread names, changed (dump rules read them);
- exact mode's traced bytes moved by a sampling period or more.

Collections asked for (a command, a detach, the exit) always send, with what was held.

Merging loses nothing: a SAMPLES body carries absolute figures (cumulative since attach,
live as of the collection), so per key the latest wins; new stacks and label sets are
each sent once, so they are concatenated, in order, before the figures that use them;
evictions only ever come in the last body merged. ``seq`` is the last collection's:
heapspy reads the gap as the collections a frame stands for (heapspy/aggregate.py).
"""

import time
from typing import Any, Dict, List, Optional, Tuple

from heapspy_agent.schema import MAX_SITES_PER_FRAME

Live = Tuple[int, int, float, float]
SITE_MAPS = ("inuse", "alloc", "est", "var")
# facts the dump rules look at (threads>N, tasks>N and their growth): sent when they change
WATCHED_FACTS = ("threads", "thread_names", "asyncio_tasks")
# exact mode's traced bytes (which include the agent's own allocations) force a frame when
# they move by the label samples' period, or by this when there are none
EXACT_MOVE = 512 * 1024
# estimates of live bytes are sums of floats: a sample added and freed may leave a residue
EST_TOLERANCE = 1e-9


def merge(held: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    """One collection body standing for ``held`` then ``new`` (neither is changed)."""
    out = dict(new)
    for key in ("stacks", "evicted"):
        if held.get(key) or new.get(key):
            out[key] = list(held.get(key, ())) + list(new.get(key, ()))
    for key in SITE_MAPS + ("labels", "totals", "facts"):
        if key in held:
            merged = dict(held[key])
            merged.update(new.get(key, {}))
            out[key] = merged
    if "labelled" in held:
        out["labelled"] = merge(held["labelled"], new.get("labelled", {}))
    return out


def _too_big(body: Dict[str, Any]) -> bool:
    """Whether one SAMPLES frame would leave some of its site entries out (fit_samples)."""
    parts = (body, body.get("labelled") or {})
    return any(len(part.get(key, ())) > MAX_SITES_PER_FRAME for part in parts for key in SITE_MAPS)


def _est_moved(a: float, b: float) -> bool:
    return abs(a - b) > EST_TOLERANCE * max(1.0, abs(a), abs(b))


class LiveRecord:
    """The live figures of each site as last sent (sites with nothing live are left
    out: what this holds follows the live heap, as the shim's tables do)."""

    def __init__(self) -> None:
        self.sites = {}  # type: Dict[str, Live]

    def changed(self, body: Dict[str, Any]) -> bool:
        est = body.get("est", {})
        for key, (count, size) in body.get("inuse", {}).items():
            last = self.sites.get(key, (0, 0, 0.0, 0.0))
            if count != last[0] or size != last[1]:
                return True
            e = est.get(key)
            if e is not None and (_est_moved(e[2], last[2]) or _est_moved(e[3], last[3])):
                return True
        return False

    def sent(self, body: Dict[str, Any]) -> None:
        est = body.get("est", {})
        for key, (count, size) in body.get("inuse", {}).items():
            if count or size:
                e = est.get(key)
                self.sites[key] = (
                    (count, size, e[2], e[3]) if e is not None else (count, size, 0.0, 0.0)
                )
            else:
                self.sites.pop(key, None)
        for sid in body.get("evicted", ()):
            self.sites.pop(str(sid), None)


class QuietIntervals:
    """Decides, for each collection, whether its frame goes now or is held back; holds
    it meanwhile. ``idle_report`` 0: every collection is sent, as without it."""

    def __init__(self, idle_report: float, interval: float) -> None:
        self.idle_report = idle_report
        self.interval = interval
        self.held = None  # type: Optional[Dict[str, Any]]
        self.last_sent = time.monotonic()  # when the last SAMPLES frame went out
        self.live = LiveRecord()
        self.labelled_live = LiveRecord()  # exact mode's label samples

    def take(self, body: Dict[str, Any]) -> List[Dict[str, Any]]:
        """The bodies to consider sending, in order, for this collection: ``body`` with
        what was held merged in before it, or what was held on its own first when one
        frame could not carry both; nothing is held afterwards."""
        held, self.held = self.held, None
        if held is None:
            return [body]
        merged = merge(held, body)
        return [held, body] if _too_big(merged) else [merged]

    def flush(self) -> Optional[Dict[str, Any]]:
        """What was held, to send now without a collection; nothing is held afterwards."""
        held, self.held = self.held, None
        return held

    def hold(self, body: Dict[str, Any], sent: Dict[str, Dict[str, Any]]) -> bool:
        """Hold a scheduled collection's merged ``body`` back when it may wait; ``sent``:
        the totals and facts as last sent. False: send it now."""
        if self.idle_report <= 0:
            return False
        if time.monotonic() - self.last_sent + self.interval / 2 >= self.idle_report:
            return False
        if body.get("evicted") or self.live.changed(body):
            return False
        labelled = body.get("labelled")
        if labelled is not None and (
            labelled.get("evicted") or self.labelled_live.changed(labelled)
        ):
            return False
        if _too_big(body):
            return False  # one frame could not carry it all: send rather than drop
        totals, last_totals = body.get("totals", {}), sent.get("totals", {})
        if totals.get("dropped_samples", 0) != last_totals.get("dropped_samples", 0):
            return False
        traced = totals.get("traced_bytes")
        period = totals.get("rate", 0)
        period = period if period > 1 else EXACT_MOVE
        if traced is not None and abs(traced - last_totals.get("traced_bytes", 0)) >= period:
            return False
        facts, last_facts = body.get("facts", {}), sent.get("facts", {})
        if any(facts.get(k) != last_facts.get(k) for k in WATCHED_FACTS):
            return False
        self.held = body
        return True

    def sending(self, body: Dict[str, Any]) -> None:
        """``body`` goes out now (its labelled part too): its live figures are heapspy's."""
        self.last_sent = time.monotonic()
        if self.idle_report > 0:
            self.live.sent(body)
            labelled = body.get("labelled")
            if labelled is not None:
                self.labelled_live.sent(labelled)
