"""Go's heap-sample upscaling, and how uncertain it is, in one place for the aggregator,
writer and reports."""

from __future__ import annotations

import math

Z_95 = 1.96  # standard normal quantile: ±1.96 standard deviations hold 95%


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


def sampling_variance(objects: float, nbytes: float, rate: int) -> tuple[float, float]:
    """Variance of one stack's upscaled (objects, bytes) estimate, from the estimate itself.

    Sampling is a Poisson process over allocated bytes with mean gap ``rate``: a block of
    ``s`` bytes is sampled with probability ``p = 1 - exp(-s/rate)``, independently of
    every other block, and then counts ``1/p`` blocks (Horvitz-Thompson, what ``scale``
    does). For ``N`` such blocks the bytes estimate has variance ``N s² (1-p)/p`` and the
    objects estimate ``N (1-p)/p``; the variances of different stacks add.

    A dump keeps only each stack's upscaled totals, not Go's per-(stack, size) buckets,
    so ``N`` is the estimated ``objects`` and ``s`` their average size. That is right for
    a stack of one size and approximate for a stack that mixes sizes; we accept it
    because the dump holds nothing better and the approximation is good where it matters
    most: for blocks much smaller than the rate ``s² (1-p)/p ≈ s·rate``, so the bytes
    variance is about ``rate × bytes`` whatever the mix. Mixes of sizes near or above
    the rate get a rougher figure, and the objects variance of a mixed stack comes out
    low (it goes with the mean of ``1/s``, not with ``1/mean(s)``).

    Exact values (``rate <= 1``) and empty stacks have no sampling error.
    """
    if rate <= 1 or objects <= 0 or nbytes <= 0:
        return 0.0, 0.0
    size = nbytes / objects
    ratio = size / rate
    # (1-p)/p = exp(-s/rate) / (1 - exp(-s/rate)) = 1/expm1(s/rate), precise for small s;
    # beyond ~700 expm1 overflows, and a block that large is sampled for certain anyway.
    odds = 1.0 / math.expm1(ratio) if ratio < 700.0 else 0.0
    return objects * odds, objects * size * size * odds


def estimate_variance(
    objects: float, nbytes: float, rate: int, recorded: tuple[float, float] | None = None
) -> tuple[float, float]:
    """The variance of one stack's upscaled (objects, bytes): the one definition every
    error bar uses (top, report, status, the endpoint, the demo).

    ``recorded`` is the pair the shim summed over the stack's own samples, each at the
    rate in force when it was taken: a sample of weight ``w = 1/p`` and ``s`` bytes adds
    ``w (w - 1)`` and ``w (w - 1) s²``, the unbiased estimates of its ``(1-p)/p`` and
    ``s² (1-p)/p``. That stays right across ``heapspy rate`` changes and for stacks that
    mix sizes. Without it (a dump or a session of an older heapspy) the variance comes
    from the estimate itself at ``rate`` (``sampling_variance``), as if every sample had
    been taken at that rate; for one rate and one size the two agree exactly.
    """
    if recorded is None:
        return sampling_variance(objects, nbytes, rate)
    return max(recorded[0], 0.0), max(recorded[1], 0.0)


def relative_error(value: float, variance: float) -> float | None:
    """Half-width of the 95% confidence interval as a fraction of ``value`` (normal
    approximation); None for a zero value, whose relative error means nothing."""
    if not value:
        return None
    return Z_95 * math.sqrt(max(variance, 0.0)) / abs(value)


def format_error(relative: float | None) -> str:
    """``±17%``, ``±<1%`` below half a percent, ``-`` when undefined (a zero value)."""
    if relative is None:
        return "-"
    percent = 100.0 * relative
    if percent < 0.5:
        return "±<1%"
    return f"±{int(percent + 0.5)}%"
