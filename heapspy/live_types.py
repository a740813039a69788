"""The types of the live samples (sampled mode): the agent names the type of every live
sample (``heapspy_agent.object_types``), each dump splits its stacks' ``inuse_*`` by
type (the pprof label ``type``), and ``top --by type`` ranks them.

Classifying visits every live sample in the target, so it runs at each dump and, for the
live view, at most every TYPES_EVERY seconds; the answer holds until a site changes.
"""

from __future__ import annotations

import logging
import time

from heapspy_agent.schema import SAMPLED

from heapspy.aggregate import Aggregator
from heapspy.channel import AgentCall

log = logging.getLogger("heapspy")

TYPES_EVERY = 5.0  # seconds between classifications of the live samples for `top --by type`
TYPES_TIMEOUT = 30.0  # a few hundred ms per 100,000 live samples (benchmarks/type_classify_cost.py)


class TypeClassifier:
    """When the session last had the live samples classified, and asking for it."""

    def __init__(self) -> None:
        self.at = 0.0  # unix time of the last classification, 0: none yet

    def classify(self, call: AgentCall, agg: Aggregator) -> float | None:
        """Have the agent name the type of every live sample and fold the answer into
        ``agg``, for the next dump or view. Returns what it cost the target in seconds,
        None when it could not be done (not sampled mode, or the agent said why)."""
        if agg.sampling.mode != SAMPLED:
            return None
        reply = call("types", timeout=TYPES_TIMEOUT)
        if not reply.get("ok"):
            log.info("no types for this dump: %s", reply.get("error"))
            return None
        agg.apply_types(reply.get("types", {}), bool(reply.get("complete")))
        self.at = time.time()
        return float(reply.get("seconds", 0.0))

    def due(self) -> bool:
        """Whether the live view should have the samples classified again."""
        return time.time() - self.at >= TYPES_EVERY
