"""Where memory was allocated, summed from a profile's stacks: flat and cumulative
values per function (or per line), and their sampling variances.

Unlike pprof, functions are told apart by file as well as name: Python reuses names such
as ``__init__`` and ``<module>`` in every file, and merging them would hide where memory
goes. Report, diff and the flame graph's header all count the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple, TypeVar

from heapspy.errors import UsageError
from heapspy.model import LABEL_KEYS, NO_LABEL, Frame
from heapspy.pprof import PERIOD_TYPE, SAMPLE_TYPE_NAMES, DecodedProfile, DecodedSample
from heapspy.scaling import estimate_variance

# The (objects, bytes) sample types that estimate the same blocks: the sampling variance
# of either needs both (see scaling.sampling_variance).
_ESTIMATE_PAIRS = {
    "alloc_objects": ("alloc_objects", "alloc_space"),
    "alloc_space": ("alloc_objects", "alloc_space"),
    "inuse_objects": ("inuse_objects", "inuse_space"),
    "inuse_space": ("inuse_objects", "inuse_space"),
}
_N = TypeVar("_N", int, float)


class Site(NamedTuple):
    """Where memory was allocated: a function in a file, and a line when it matters.

    ``line`` is 0 when sites are grouped by function.
    """

    function: str
    filename: str
    line: int = 0

    def describe(self) -> str:
        if self.line:
            return f"{self.function} {self.filename}:{self.line}"
        return f"{self.function} ({self.filename})" if self.filename else self.function


def check_by(key: str) -> str:
    """Validate a ``--by`` value: "" (by function) or a label key (``model.LABEL_KEYS``)."""
    if key and key not in LABEL_KEYS:
        raise UsageError(
            f"Unknown label {key!r} to group by; choose one of {', '.join(LABEL_KEYS)}."
        )
    return key


def label_site(value: str | None) -> Site:
    """The row of a label's value in a table grouped ``--by`` that label."""
    return Site(value if value is not None else NO_LABEL, "")


def _by_label(
    samples: Sequence[DecodedSample], weights: Sequence[_N], zero: _N, key: str
) -> dict[Site, tuple[_N, _N]]:
    totals: dict[Site, _N] = {}
    for sample, weight in zip(samples, weights):
        site = label_site(dict(sample.labels).get(key))
        totals[site] = totals.get(site, zero) + weight
    return {site: (value, value) for site, value in totals.items()}


def label_leafed(profile: DecodedProfile, key: str) -> DecodedProfile:
    """The profile with each sample that has label ``key`` given one more leaf frame
    named by its value (``--types``: the type of the objects a line keeps, below it, as
    the census shows types); samples without it unchanged."""
    leaves: dict[str, Frame] = {}
    samples = []
    for sample in profile.samples:
        value = dict(sample.labels).get(key)
        if value is not None:
            leaf = leaves.get(value)
            if leaf is None:
                leaf = leaves[value] = Frame(value, "", 0)
            sample = replace(sample, stack=(*sample.stack, leaf))
        samples.append(sample)
    return replace(profile, samples=tuple(samples))


def label_rooted(profile: DecodedProfile, key: str) -> DecodedProfile:
    """The profile with each stack under a root frame naming its value of label ``key``
    (``thread: worker-1``; ``NO_LABEL`` when it has none): a flame graph grouped by it."""
    roots: dict[str, Frame] = {}
    samples = []
    for sample in profile.samples:
        value = dict(sample.labels).get(key, NO_LABEL)
        root = roots.get(value)
        if root is None:
            root = roots[value] = Frame(f"{key}: {value}", "", 0)
        samples.append(replace(sample, stack=(root, *sample.stack)))
    return replace(profile, samples=tuple(samples))


def aggregate_labels(profile: DecodedProfile, index: int, key: str) -> dict[Site, tuple[int, int]]:
    """Totals of sample value ``index`` per value of label ``key`` (as flat and cum alike:
    every sample has one value, ``NO_LABEL`` when it has none)."""
    samples = _with_value(profile, index)
    return _by_label(samples, [sample.values[index] for sample in samples], 0, key)


def check_sample_index(name: str) -> str:
    """Validate a ``--sample-index`` value; ``""`` means the profile's own default."""
    if name and name not in SAMPLE_TYPE_NAMES:
        raise UsageError(
            f"Unknown sample index {name!r}; choose one of {', '.join(SAMPLE_TYPE_NAMES)}."
        )
    return name


def resolve_sample_index(profile: DecodedProfile, name: str, path: Path) -> int:
    """Position of sample type ``name`` in ``profile`` (its default when ``name`` is "")."""
    names = profile.sample_type_names
    if not name:
        return profile.default_index()
    if name not in names:
        raise UsageError(f"The dump {path} has no sample type {name!r}; it has {', '.join(names)}.")
    return names.index(name)


def _with_value(profile: DecodedProfile, index: int) -> list[DecodedSample]:
    return [sample for sample in profile.samples if sample.values[index] and sample.stack]


def _flat_and_cum(
    samples: Sequence[DecodedSample], weights: Sequence[_N], zero: _N, lines: bool
) -> dict[Site, tuple[_N, _N]]:
    """Sum each sample's weight into its leaf's flat and every site's cum (once each)."""
    # Work on small integers, one per site, reached from each frame by identity: decoded
    # frames are shared per location, and keeping the per-frame work in C (map, set)
    # makes a 100,000-stack profile take a fraction of a second instead of seconds.
    frames: dict[int, Frame] = {}
    for sample in samples:
        frames.update(zip(map(id, sample.stack), sample.stack))
    numbers: dict[Site, int] = {}
    number_of_frame: dict[int, int] = {}
    for identity, frame in frames.items():
        site = Site(frame.function, frame.filename, frame.line if lines else 0)
        number_of_frame[identity] = numbers.setdefault(site, len(numbers))
    flat = [zero] * len(numbers)
    cum = [zero] * len(numbers)
    lookup = number_of_frame.__getitem__
    for sample, weight in zip(samples, weights):
        for number in set(map(lookup, map(id, sample.stack))):
            cum[number] += weight
        flat[lookup(id(sample.stack[-1]))] += weight
    return {site: (flat[number], cum[number]) for site, number in numbers.items()}


def aggregate_sites(
    profile: DecodedProfile, index: int, *, lines: bool = False
) -> dict[Site, tuple[int, int]]:
    """Flat and cumulative totals of sample value ``index`` per function (or per line).

    A site that appears several times in one stack (recursion) counts once toward its
    cumulative value, as in pprof.
    """
    samples = _with_value(profile, index)
    return _flat_and_cum(samples, [sample.values[index] for sample in samples], 0, lines)


def is_sampled(profile: DecodedProfile, index: int) -> bool:
    """Whether value ``index`` is an estimate from byte sampling that ``site_variances``
    can judge: a heap profile (Go's or ours) with a period above 1 byte."""
    names = profile.sample_type_names
    return (
        profile.period > 1
        and profile.period_type == PERIOD_TYPE
        and names[index] in _ESTIMATE_PAIRS
        and all(name in names for name in _ESTIMATE_PAIRS[names[index]])
    )


def sample_variance(
    profile: DecodedProfile, sample: DecodedSample, objects_index: int, bytes_index: int
) -> tuple[float, float] | None:
    """The variances a heapspy session recorded for this sample's (objects, bytes), when
    the profile's sample types are heapspy's own (the labels are named by position)."""
    if profile.sample_type_names[: len(SAMPLE_TYPE_NAMES)] != SAMPLE_TYPE_NAMES:
        return None
    return sample.recorded_variance(objects_index, bytes_index)


def site_variances(
    profile: DecodedProfile, index: int, by: str = ""
) -> dict[Site, tuple[float, float]]:
    """Sampling variance of each function's flat and cum value ``index`` (by function).

    Each sample is one stack, estimated independently of the others: its variance comes
    from its own (objects, bytes) pair and the variances its session recorded
    (``scaling.estimate_variance``), flat sums it
    over the stacks a function ends, cum over the stacks it is in, once per stack, like
    the values. Only for profiles where ``is_sampled`` holds. With ``by`` a label key,
    per value of that label (``aggregate_labels``).
    """
    names = profile.sample_type_names
    objects_index, bytes_index = (names.index(name) for name in _ESTIMATE_PAIRS[names[index]])
    pick = 0 if index == objects_index else 1
    samples = _with_value(profile, index)
    period = profile.period
    variances = [
        estimate_variance(
            sample.values[objects_index],
            sample.values[bytes_index],
            period,
            sample_variance(profile, sample, objects_index, bytes_index),
        )[pick]
        for sample in samples
    ]
    if by:
        return _by_label(samples, variances, 0.0, by)
    return _flat_and_cum(samples, variances, 0.0, False)
