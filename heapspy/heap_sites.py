"""One allocation site as the aggregator keeps it: a stack (and its label set) with what
the agent last said of it, sampled counts, their estimates and variances, and what the
same frames allocated under stack ids the agent has since evicted.

Sampled figures are upscaled here (``heapspy.scaling``): each site's own estimates when
the agent sent them (every sample at its own rate), else from its counts at the rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from heapspy.model import Stack
from heapspy.scaling import estimate_variance, scale

TypeShare = tuple[str, int, int, float, float]
"""One type's part of a site's live samples: (type name, sampled objects, their bytes,
estimated objects, estimated bytes); the agent's ``types`` reply (heapspy_agent.schema)."""


@dataclass
class Site:
    stack: Stack
    exact: bool
    inuse_objects: int = 0
    inuse_bytes: int = 0
    alloc_objects: int = 0
    alloc_bytes: int = 0
    estimate: tuple[float, float, float, float] | None = None  # see SiteCounts.estimate
    label_set: int = 0  # its label set's id (Aggregator.label_sets)
    # its live samples by type, as the agent last classified them (live_types.apply_types);
    # None once the site changed since (its dump samples then carry no type)
    types: tuple[TypeShare, ...] | None = None
    variance: tuple[float, float, float, float] | None = None  # see SiteCounts.variance
    # what this stack's frames allocated under ids since evicted: (objects, bytes, the
    # estimates of both, their variances), added to what the agent says of this id
    carried: tuple[int, int, float, float, float, float] = (0, 0, 0.0, 0.0, 0.0, 0.0)

    def live(self, rate: int) -> tuple[float, float]:
        """Estimated live (objects, bytes) at this site."""
        if self.exact:
            return float(self.inuse_objects), float(self.inuse_bytes)
        if self.estimate is not None:
            return self.estimate[2], self.estimate[3]
        return scale(self.inuse_objects, self.inuse_bytes, rate)

    def allocated(self, rate: int) -> tuple[float, float]:
        """Estimated (objects, bytes) allocated here since attach."""
        if self.exact:
            return float(self.alloc_objects), float(self.alloc_bytes)
        if self.estimate is not None:
            return self.estimate[0], self.estimate[1]
        return scale(self.alloc_objects, self.alloc_bytes, rate)

    def live_variance(self, rate: int) -> float:
        """Variance of the live bytes estimate (``scaling.estimate_variance``)."""
        if self.exact:
            return 0.0
        recorded = None if self.variance is None else (self.variance[2], self.variance[3])
        return estimate_variance(*self.live(rate), rate, recorded)[1]

    def alloc_variance(self, rate: int) -> float:
        """Variance of the allocated bytes estimate."""
        if self.exact:
            return 0.0
        recorded = None if self.variance is None else (self.variance[0], self.variance[1])
        return estimate_variance(*self.allocated(rate), rate, recorded)[1]

    def retire(self) -> None:
        """Evicted by the agent: nothing of it is live; what it allocated stays."""
        self.inuse_objects = self.inuse_bytes = 0
        if self.estimate is not None:
            self.estimate = (self.estimate[0], self.estimate[1], 0.0, 0.0)
        if self.variance is not None:
            self.variance = (self.variance[0], self.variance[1], 0.0, 0.0)

    def absorb(self, other: Site) -> None:
        """Take up what another retired site with the same frames allocated."""
        self.alloc_objects += other.alloc_objects
        self.alloc_bytes += other.alloc_bytes
        if other.estimate is not None:
            mine = self.estimate or (0.0, 0.0, 0.0, 0.0)
            self.estimate = (mine[0] + other.estimate[0], mine[1] + other.estimate[1], 0.0, 0.0)
        if other.variance is not None:
            mine = self.variance or (0.0, 0.0, 0.0, 0.0)
            self.variance = (mine[0] + other.variance[0], mine[1] + other.variance[1], 0.0, 0.0)

    def carry(self) -> tuple[int, int, float, float, float, float]:
        """What a stack with these frames that comes back starts from."""
        est = self.estimate or (0.0, 0.0, 0.0, 0.0)
        var = self.variance or (0.0, 0.0, 0.0, 0.0)
        return (self.alloc_objects, self.alloc_bytes, est[0], est[1], var[0], var[1])


def retired_key(stack: Stack, label_set: int) -> tuple[int, ...]:
    """An evicted site's key: its label set, and its frames by identity (the aggregator
    keeps one Frame object per distinct frame, so equal stacks have equal keys)."""
    return (label_set, *map(id, stack))
