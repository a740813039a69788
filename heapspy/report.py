"""``heapspy report``: the top allocation sites of one dump, after a plain summary.

The site table reads like ``pprof -top``: per function, ``flat`` is what the function
allocated itself (it is the leaf of the stack), ``cum`` adds everything its callees
allocated, ``sum%`` runs down the ``flat%`` column. Unlike pprof, functions are told apart
by file as well as name: Python reuses names such as ``__init__`` and ``<module>`` in
every file, and merging them would hide where memory goes.

The summary's exact totals and size histogram come from the JSON sidecar the dump writer
leaves next to the dump (``x.pb.gz`` → ``x.json``), key ``totals``::

    {"totals": {"allocated_bytes": 128, "allocations": 4, "freed_bytes": 64, "frees": 2,
                "size_classes": [[k, count], ...]}}

where class ``k`` counts allocations with ``2**(k-1) < size <= 2**k``. Without a sidecar,
or with ``"totals": null`` (a session that counted none), the report says so and
estimates what it can from the profile alone.

JSON output (``render_report(report, "json")``) is a stable structure; fields are only
ever added, and ``schema`` changes if one is removed or changes meaning::

    {
      "schema": "heapspy-report/1",
      "dump": "path/to/x.pb.gz",
      "sidecar": "path/to/x.json",
      "sidecar_status": "found",             # or "missing", or "no_totals"
      "sample_index": "inuse_space",
      "unit": "bytes",                       # or "count" for *_objects
      "period": 524288,                      # mean bytes between samples; 1 = exact
      "time_nanos": 0, "duration_nanos": 0,
      "comments": ["..."],
      "totals": {
        "source": "sidecar",                 # or "profile" (estimates, no sidecar)
        "allocated_bytes": 128, "allocations": 4,
        "freed_bytes": 64, "frees": 2,       # null when source is "profile"
        "live_bytes": 64, "live_objects": 2, # allocated - freed, or profile in-use
        "live_err95_pct": 0                  # sampling error of live_bytes, as below
      },
      "size_classes": [                      # from the sidecar, or approximated from
        {"class": 7, "min_bytes": 65,        # each site's average object size; bounds
         "max_bytes": 128, "count": 4}],     # inclusive, class 0 holds sizes 0 and 1
      "runtime": {                           # the target at dump time (sidecar), or null
        "gc_collections": [41, 3, 1], "gc_collected": [900, 12, 0],  # since attach,
        "gc_uncollectable": [0, 0, 0], "gc_seconds": 0.012,          # per generation
        "threads": 5, "thread_names": ["MainThread", "..."],
        "asyncio_tasks": [8]},               # unfinished tasks per running loop
      "total": 9988180,                      # sum of sample_index over all samples
      "functions": 3,                        # how many functions have a non-zero cum
      "top": [{"function": "leaky", "filename": "/app/app.py",
               "flat": 9701573, "flat_pct": 94.85, "sum_pct": 94.85,
               "cum": 9701573, "cum_pct": 94.85,
               "flat_err95_pct": 45.54,      # sampling error: half-width of the 95%
               "cum_err95_pct": 45.54}]      # interval, in percent of the value
    }

``*_err95_pct`` is 0 in an exact dump (period 1), and null for a value of 0 or a
profile whose sampling heapspy cannot judge (not a heap profile sampled by bytes). The
text output shows it as ``±95%`` columns, for sampled dumps only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from heapspy.dumps import read_dump_file, sidecar_path
from heapspy.errors import DumpError, UsageError
from heapspy.model import Frame
from heapspy.pprof import (
    PERIOD_TYPE,
    SAMPLE_TYPE_NAMES,
    SIZE_LABEL,
    DecodedProfile,
    DecodedSample,
    read_profile,
)
from heapspy.runtime_stats import RuntimeStats
from heapspy.scaling import format_error, relative_error, sampling_variance

OUTPUT_FORMATS = ("text", "json")
SIDECAR_FOUND = "found"
SIDECAR_MISSING = "missing"
SIDECAR_NO_TOTALS = "no_totals"
REPORT_SCHEMA = "heapspy-report/1"
# The (objects, bytes) sample types that estimate the same blocks: the sampling variance
# of either needs both (see scaling.sampling_variance).
_ESTIMATE_PAIRS = {
    "alloc_objects": ("alloc_objects", "alloc_space"),
    "alloc_space": ("alloc_objects", "alloc_space"),
    "inuse_objects": ("inuse_objects", "inuse_space"),
    "inuse_space": ("inuse_objects", "inuse_space"),
}
_N = TypeVar("_N", int, float)

_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


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


def format_bytes(value: int, *, signed: bool = False) -> str:
    """Human-readable bytes in binary units: ``128 bytes``, ``1.5 KiB``, ``-3 MiB``."""
    sign = "-" if value < 0 else ("+" if signed and value > 0 else "")
    magnitude = abs(value)
    if magnitude < 1024:
        return f"{sign}{magnitude} {'byte' if magnitude == 1 else 'bytes'}"
    scaled = float(magnitude)
    index = -1
    while scaled >= 1024.0 and index < len(_BYTE_UNITS) - 1:
        scaled /= 1024.0
        index += 1
    digits = f"{scaled:.2f}".rstrip("0").rstrip(".")
    return f"{sign}{digits} {_BYTE_UNITS[index]}"


def format_value(value: int, unit: str, *, signed: bool = False) -> str:
    """A sample value in its unit: bytes made human-readable, counts with separators."""
    if unit == "bytes":
        return format_bytes(value, signed=signed)
    return f"{value:+,}" if signed else f"{value:,}"


def size_class_label(k: int) -> str:
    """``(512 bytes, 1 KiB]`` for class 10: sizes above 2**(k-1), up to 2**k."""
    if k <= 0:
        return "0-1 byte"
    return f"({format_bytes(2 ** (k - 1))}, {format_bytes(2**k)}]"


def size_class_of(size: int) -> int:
    """The class ``k`` with ``2**(k-1) < size <= 2**k`` (0 for sizes 0 and 1)."""
    return (size - 1).bit_length() if size > 1 else 0


def check_sample_index(name: str) -> str:
    """Validate a ``--sample-index`` value; ``""`` means the profile's own default."""
    if name and name not in SAMPLE_TYPE_NAMES:
        raise UsageError(
            f"Unknown sample index {name!r}; choose one of {', '.join(SAMPLE_TYPE_NAMES)}."
        )
    return name


def check_top(top: int) -> int:
    if top < 1:
        raise UsageError(f"--top must be at least 1, got {top}.")
    return top


def check_format(output_format: str) -> str:
    if output_format not in OUTPUT_FORMATS:
        raise UsageError(
            f"Unknown format {output_format!r}; choose one of {', '.join(OUTPUT_FORMATS)}."
        )
    return output_format


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


def site_variances(profile: DecodedProfile, index: int) -> dict[Site, tuple[float, float]]:
    """Sampling variance of each function's flat and cum value ``index`` (by function).

    Each sample is one stack, estimated independently of the others: its variance comes
    from its own (objects, bytes) pair (``scaling.sampling_variance``), flat sums it
    over the stacks a function ends, cum over the stacks it is in, once per stack, like
    the values. Only for profiles where ``is_sampled`` holds.
    """
    names = profile.sample_type_names
    objects_index, bytes_index = (names.index(name) for name in _ESTIMATE_PAIRS[names[index]])
    pick = 0 if index == objects_index else 1
    samples = _with_value(profile, index)
    period = profile.period
    variances = [
        sampling_variance(sample.values[objects_index], sample.values[bytes_index], period)[pick]
        for sample in samples
    ]
    return _flat_and_cum(samples, variances, 0.0, False)


@dataclass(frozen=True)
class SiteRow:
    """One line of the top table; percentages are of the profile's total.

    ``flat_error`` and ``cum_error`` are the half-widths of the values' 95% sampling
    intervals, as fractions of the values: 0 in an exact dump, None when the value is
    0 or the profile's sampling is not one heapspy can judge (see ``is_sampled``).
    """

    site: Site
    flat: int
    cum: int
    flat_pct: float
    sum_pct: float
    cum_pct: float
    flat_error: float | None = None
    cum_error: float | None = None


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


@dataclass(frozen=True)
class ReportConfig:
    """What ``heapspy report`` was asked for."""

    dump: Path
    top: int = 10
    sample_index: str = ""

    def __post_init__(self) -> None:
        check_top(self.top)
        check_sample_index(self.sample_index)


@dataclass(frozen=True)
class Report:
    dump: Path
    sidecar: Path
    sidecar_status: str
    sample_index: str
    unit: str
    period: int
    time_nanos: int
    duration_nanos: int
    comments: tuple[str, ...]
    totals: Totals
    total: int
    functions: int
    top: tuple[SiteRow, ...]
    sampled: bool = False  # the values are estimates with errors: see is_sampled
    runtime: RuntimeStats | None = None  # the target's GC, threads, tasks at dump time


def top_rows(
    sites: dict[Site, tuple[int, int]],
    total: int,
    limit: int,
    variances: dict[Site, tuple[float, float]] | None = None,
) -> tuple[SiteRow, ...]:
    """The ``limit`` sites with most flat value (then cum, then name), like pprof -top;
    with each value's relative sampling error when ``variances`` are given."""

    def percent(value: int) -> float:
        return 100.0 * value / total if total else 0.0

    ordered = sorted(sites.items(), key=lambda item: (-item[1][0], -item[1][1], item[0]))
    rows = []
    running = 0
    for site, (flat, cum) in ordered[:limit]:
        running += flat
        flat_error = cum_error = None
        if variances is not None:
            flat_var, cum_var = variances.get(site, (0.0, 0.0))
            flat_error, cum_error = relative_error(flat, flat_var), relative_error(cum, cum_var)
        percents = percent(flat), percent(running), percent(cum)
        rows.append(SiteRow(site, flat, cum, *percents, flat_error, cum_error))
    return tuple(rows)


def _int_field(totals: dict[str, Any], key: str, path: Path) -> int:
    value = totals.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise DumpError(f"The sidecar {path} has no valid totals.{key} (a count >= 0).")
    return value


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar's JSON object, or None when there is no sidecar (a dump copied alone).

    A sidecar that is there but unreadable, or not a JSON object, is an error.
    """
    try:
        text = read_dump_file(path, "sidecar").decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise DumpError(f"Cannot read the sidecar {path}: {exc}.") from exc
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise DumpError(f"The sidecar {path} is not valid JSON ({exc}).") from exc
    if not isinstance(document, dict):
        raise DumpError(f"The sidecar {path} is not a JSON object.")
    return document


def read_sidecar_totals(path: Path) -> tuple[str, Totals | None]:
    """The sidecar's status and its exact totals (None unless the status is "found").

    A missing sidecar, or one whose totals are null, is normal (dumps copied alone, a
    session that counted nothing); a sidecar that is there but unreadable is an error.
    """
    document = read_sidecar(path)
    if document is None:
        return SIDECAR_MISSING, None
    return sidecar_totals(document, path)


def sidecar_totals(document: dict[str, Any], path: Path) -> tuple[str, Totals | None]:
    """The status and exact totals of a sidecar already read from ``path``."""
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
    stacks' variances add (see ``site_variances``); 0 for an exact profile."""
    names = profile.sample_type_names
    if "inuse_space" not in names:
        return None
    index = names.index("inuse_space")
    if not is_sampled(profile, index):
        return 0.0 if profile.period <= 1 else None
    objects_index = names.index("inuse_objects")
    variance = sum(
        sampling_variance(s.values[objects_index], s.values[index], profile.period)[1]
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


def build_report(config: ReportConfig) -> Report:
    """Read the dump and its sidecar and compute the summary and top table."""
    profile = read_profile(config.dump)
    index = resolve_sample_index(profile, config.sample_index, config.dump)
    sidecar = sidecar_path(config.dump)
    document = read_sidecar(sidecar)
    status, totals = (
        (SIDECAR_MISSING, None) if document is None else sidecar_totals(document, sidecar)
    )
    totals = complete_totals(profile, totals)
    runtime = RuntimeStats.from_facts((document or {}).get("facts"))
    sites = aggregate_sites(profile, index)
    total = sum(sample.values[index] for sample in profile.samples)
    name, unit = profile.sample_types[index]
    sampled = is_sampled(profile, index)
    variances: dict[Site, tuple[float, float]] | None = None
    if sampled:
        variances = site_variances(profile, index)
    elif profile.period <= 1:
        variances = {}  # exact: every value's error is 0
    return Report(
        dump=config.dump,
        sidecar=sidecar,
        sidecar_status=status,
        sample_index=name,
        unit=unit,
        period=profile.period,
        time_nanos=profile.time_nanos,
        duration_nanos=profile.duration_nanos,
        comments=profile.comments,
        totals=totals,
        total=total,
        functions=len(sites),
        top=top_rows(sites, total, config.top, variances),
        sampled=sampled,
        runtime=runtime,
    )


def format_time(nanos: int) -> str:
    """A profile's time (nanoseconds since the epoch) as ``2023-11-14 22:13:20 UTC``."""
    seconds = nanos / 1e9
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def describe_sampling(period: int) -> str:
    """What a profile's period means: the mean bytes between samples, or exact."""
    if period > 1:
        return f"one sample every {format_bytes(period)} on average"
    return "exact (every allocation recorded)"


def _size_class_lines(classes: Iterable[tuple[int, int]]) -> list[str]:
    pairs = [(k, count) for k, count in classes if count]
    total = sum(count for _, count in pairs)
    if not total:
        return ["  (no allocations recorded)"]
    width = max(len(size_class_label(k)) for k, _ in pairs)
    return [
        f"  {size_class_label(k):<{width}}  {count:>12,}  {100.0 * count / total:6.2f}%"
        for k, count in pairs
    ]


def table_lines(rows: Iterable[SiteRow], unit: str, *, errors: bool = False) -> list[str]:
    """The pprof-style table: flat, flat%, sum%, cum, cum%, site; with ``errors``, each
    value is followed by its 95% sampling error (``±95%``)."""
    flat_err = cum_err = f" {'±95%':>5}" if errors else ""
    head = f"{'flat':>12}{flat_err} {'flat%':>7} {'sum%':>7} {'cum':>12}{cum_err} {'cum%':>7}"
    lines = [f"{head}  site"]
    for row in rows:
        if errors:
            flat_err = f" {format_error(row.flat_error):>5}"
            cum_err = f" {format_error(row.cum_error):>5}"
        lines.append(
            f"{format_value(row.flat, unit):>12}{flat_err} {row.flat_pct:6.2f}% "
            f"{row.sum_pct:6.2f}% {format_value(row.cum, unit):>12}{cum_err} "
            f"{row.cum_pct:6.2f}%  {row.site.describe()}"
        )
    return lines


def render_text(report: Report) -> str:
    totals = report.totals
    lines = [f"Dump: {report.dump}"]
    if report.time_nanos:
        duration = f", over {report.duration_nanos / 1e9:.1f} s" if report.duration_nanos else ""
        lines.append(f"Time: {format_time(report.time_nanos)}{duration}")
    lines.append(f"Sampling: {describe_sampling(report.period)}")
    lines.extend(f"Comment: {comment}" for comment in report.comments)
    if report.runtime is not None and report.runtime.line():
        lines.append(f"Runtime: {report.runtime.line()}")
    lines.append("")
    estimated = "figures below are estimated from the profile alone."
    if report.sidecar_status == SIDECAR_FOUND:
        lines.append(f"Totals (exact, from {report.sidecar}):")
    elif report.sidecar_status == SIDECAR_NO_TOTALS:
        lines.append(f"The sidecar {report.sidecar} holds no totals: {estimated}")
    else:
        lines.append(f"No totals sidecar at {report.sidecar}: {estimated}")
    lines.append(f"Total Allocated Memory: {format_bytes(totals.allocated_bytes)}")
    lines.append(f"Number of Allocations: {totals.allocations:,}")
    if totals.frees is not None and totals.freed_bytes is None:
        lines.append(f"Number of Frees: {totals.frees:,}")
    if totals.freed_bytes is not None and totals.frees is not None:
        lines.append(f"Total Freed Memory: {format_bytes(totals.freed_bytes)}")
        lines.append(f"Number of Frees: {totals.frees:,}")
        lines.append(
            f"Live Heap Estimate: {format_bytes(totals.live_bytes)} in "
            f"{totals.live_objects:,} objects (allocated - freed since attach)"
        )
    else:
        error = f" {format_error(totals.live_error)}" if totals.live_error else ""
        lines.append(
            f"Live Heap Estimate: {format_bytes(totals.live_bytes)}{error} in "
            f"{totals.live_objects:,} objects (in use in the profile)"
        )
    approximate = ""
    if report.sidecar_status != SIDECAR_FOUND:
        approximate = " (approximate: each site at its average object size)"
    lines.append("")
    lines.append(f"Allocations by size{approximate}:")
    lines.extend(_size_class_lines(totals.size_classes))
    lines.append("")
    shown = len(report.top)
    lines.append(
        f"Top {shown} of {report.functions} functions by {report.sample_index} "
        f"(total {format_value(report.total, report.unit)}):"
    )
    lines.extend(table_lines(report.top, report.unit, errors=report.sampled))
    if report.sampled:
        lines.append("±95%: sampling error (half-width of the value's 95% confidence interval)")
    return "\n".join(lines) + "\n"


def _error_pct(relative: float | None) -> float | None:
    return None if relative is None else round(100.0 * relative, 2)


def report_to_json(report: Report) -> dict[str, Any]:
    """The documented JSON structure (see the module docstring)."""
    totals = report.totals
    return {
        "schema": REPORT_SCHEMA,
        "dump": str(report.dump),
        "sidecar": str(report.sidecar),
        "sidecar_status": report.sidecar_status,
        "sample_index": report.sample_index,
        "unit": report.unit,
        "period": report.period,
        "time_nanos": report.time_nanos,
        "duration_nanos": report.duration_nanos,
        "comments": list(report.comments),
        "totals": {
            "source": totals.source,
            "allocated_bytes": totals.allocated_bytes,
            "allocations": totals.allocations,
            "freed_bytes": totals.freed_bytes,
            "frees": totals.frees,
            "live_bytes": totals.live_bytes,
            "live_objects": totals.live_objects,
            "live_err95_pct": _error_pct(totals.live_error),
        },
        "size_classes": [
            {
                "class": k,
                "min_bytes": 2 ** (k - 1) + 1 if k > 0 else 0,
                "max_bytes": 2**k,
                "count": count,
            }
            for k, count in totals.size_classes
        ],
        "runtime": None if report.runtime is None else report.runtime.to_json(),
        "total": report.total,
        "functions": report.functions,
        "top": [
            {
                "function": row.site.function,
                "filename": row.site.filename,
                "flat": row.flat,
                "flat_pct": round(row.flat_pct, 2),
                "sum_pct": round(row.sum_pct, 2),
                "cum": row.cum,
                "cum_pct": round(row.cum_pct, 2),
                "flat_err95_pct": _error_pct(row.flat_error),
                "cum_err95_pct": _error_pct(row.cum_error),
            }
            for row in report.top
        ],
    }


def render_report(report: Report, output_format: str) -> str:
    """The report as text for people or JSON for scripts."""
    if check_format(output_format) == "json":
        return json.dumps(report_to_json(report), indent=2) + "\n"
    return render_text(report)
