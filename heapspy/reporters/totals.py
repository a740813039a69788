"""A dump's allocation totals: exact from its sidecar, or estimated from the profile.

The dump writer leaves a JSON sidecar next to each dump (``x.pb.gz`` → ``x.json``) whose
key ``totals`` holds what the session counted exactly::

    {"totals": {"allocated_bytes": 128, "allocations": 4, "freed_bytes": 64, "frees": 2,
                "size_classes": [[k, count], ...]}}

where class ``k`` counts allocations with ``2**(k-1) < size <= 2**k``. Without a sidecar,
or with ``"totals": null`` (a session that counted none), what can be is estimated from
the profile alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from heapspy.errors import DumpError
from heapspy.pprof import SIZE_LABEL, DecodedProfile
from heapspy.reporters.sites import is_sampled, sample_variance
from heapspy.scaling import estimate_variance, relative_error

SIDECAR_FOUND = "found"
SIDECAR_MISSING = "missing"
SIDECAR_NO_TOTALS = "no_totals"


@dataclass(frozen=True)
class Totals:
    """Allocation totals: exact from the sidecar, or estimated from the profile."""

    source: str
    allocated_bytes: int
    allocations: int
    live_bytes: int
    live_objects: int
    freed_bytes: int | None = None
    frees: int | None = None
    size_classes: tuple[tuple[int, int], ...] = ()
    # Half-width of the 95% interval of live_bytes, as a fraction: 0 when exact, None
    # when it cannot be judged (see is_sampled) or is 0.
    live_error: float | None = 0.0


def size_class_of(size: int) -> int:
    """The class ``k`` with ``2**(k-1) < size <= 2**k`` (0 for sizes 0 and 1)."""
    return (size - 1).bit_length() if size > 1 else 0


def _int_field(totals: dict[str, Any], key: str, path: Path) -> int:
    value = totals.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DumpError(f"The sidecar {path} has no valid totals.{key} (a count >= 0).")
    return value


def sidecar_totals(document: dict[str, Any], path: Path) -> tuple[str, Totals | None]:
    """The status and exact totals of a sidecar already read from ``path``.

    Totals that are null are normal (a session that counted nothing); totals that are
    there but malformed are an error.
    """
    totals = document.get("totals")
    if totals is None:
        return SIDECAR_NO_TOTALS, None
    if not isinstance(totals, dict):
        raise DumpError(f"The sidecar {path} has no 'totals' object.")
    allocated_bytes = _int_field(totals, "allocated_bytes", path)
    allocations = _int_field(totals, "allocations", path)
    # The sampling shim cannot know the size of a block it did not sample when it is
    # freed: freed_bytes is null then, and the live heap comes from the profile.
    freed_bytes = (
        None if totals.get("freed_bytes") is None else _int_field(totals, "freed_bytes", path)
    )
    frees = None if totals.get("frees") is None else _int_field(totals, "frees", path)
    classes = totals.get("size_classes", [])
    pairs = []
    for pair in classes if isinstance(classes, list) else [None]:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(item, int) and item >= 0 for item in pair)
        ):
            raise DumpError(
                f"The sidecar {path} has malformed totals.size_classes "
                "(expected a list of [class, count] pairs)."
            )
        pairs.append((pair[0], pair[1]))
    return SIDECAR_FOUND, Totals(
        source="sidecar",
        allocated_bytes=allocated_bytes,
        allocations=allocations,
        freed_bytes=freed_bytes,
        frees=frees,
        live_bytes=-1 if freed_bytes is None else allocated_bytes - freed_bytes,
        live_objects=-1 if frees is None else allocations - frees,
        size_classes=tuple(sorted(pairs)),
    )


def _column(profile: DecodedProfile, name: str) -> int:
    names = profile.sample_type_names
    if name not in names:
        return 0
    index = names.index(name)
    return sum(sample.values[index] for sample in profile.samples)


def live_error(profile: DecodedProfile) -> float | None:
    """The 95% sampling error of the profile's whole in-use bytes, as a fraction: the
    stacks' variances add (see ``sites.site_variances``); 0 for an exact profile."""
    names = profile.sample_type_names
    if "inuse_space" not in names:
        return None
    index = names.index("inuse_space")
    if not is_sampled(profile, index):
        return 0.0 if profile.period <= 1 else None
    objects_index = names.index("inuse_objects")
    variance = sum(
        estimate_variance(
            s.values[objects_index],
            s.values[index],
            profile.period,
            sample_variance(profile, s, objects_index, index),
        )[1]
        for s in profile.samples
    )
    return relative_error(_column(profile, "inuse_space"), variance)


def estimate_totals(profile: DecodedProfile) -> Totals:
    """What the profile alone says: upscaled sampled sites plus exact ones.

    The size histogram is approximate: each site's objects are put in the class of its
    average size (the ``bytes`` label), which is all a pprof sample keeps.
    """
    names = profile.sample_type_names
    classes: dict[int, int] = {}
    if "alloc_objects" in names:
        objects_index = names.index("alloc_objects")
        for sample in profile.samples:
            size = sample.label(SIZE_LABEL)
            objects = sample.values[objects_index]
            if size is not None and objects:
                k = size_class_of(size)
                classes[k] = classes.get(k, 0) + objects
    return Totals(
        source="profile",
        allocated_bytes=_column(profile, "alloc_space"),
        allocations=_column(profile, "alloc_objects"),
        live_bytes=_column(profile, "inuse_space"),
        live_objects=_column(profile, "inuse_objects"),
        size_classes=tuple(sorted(classes.items())),
        live_error=live_error(profile),
    )


def complete_totals(profile: DecodedProfile, totals: Totals | None) -> Totals:
    """The sidecar's exact totals, with what they lack taken from the profile.

    Without sidecar totals everything is estimated from the profile; with them but
    without freed bytes (sampled mode), only the live heap is.
    """
    if totals is None:
        return estimate_totals(profile)
    if totals.live_bytes < 0:
        estimate = estimate_totals(profile)
        return replace(
            totals,
            live_bytes=estimate.live_bytes,
            live_objects=estimate.live_objects,
            live_error=estimate.live_error,
        )
    return totals
