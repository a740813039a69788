"""Go's heap-sample upscaling, in one place for the aggregator, writer and reports."""

from __future__ import annotations

import math


def scale(count: int, size: int, rate: int) -> tuple[float, float]:
    """Estimate true (objects, bytes) from sampled ones, as runtime/pprof does.

    A block of ``avg`` bytes is sampled with probability ``1 - exp(-avg/rate)``.
    """
    if count == 0 or size == 0:
        return 0.0, 0.0
    if rate <= 1:
        return float(count), float(size)
    avg = size / count
    factor = 1.0 / (1.0 - math.exp(-avg / rate))
    return count * factor, size * factor
