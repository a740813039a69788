"""``heapspy report``: the top allocation sites of one dump, after a plain summary.

The site table reads like ``pprof -top``: per function, ``flat`` is what the function
allocated itself (it is the leaf of the stack), ``cum`` adds everything its callees
allocated, ``sum%`` runs down the ``flat%`` column. Unlike pprof, functions are told apart
by file as well as name (see ``reporters.sites``).

The summary's exact totals and size histogram come from the JSON sidecar the dump writer
leaves next to the dump (``x.pb.gz`` → ``x.json``, see ``reporters.totals``). Without a
sidecar, or with ``"totals": null`` (a session that counted none), the report says so and
estimates what it can from the profile alone.

JSON output (``build_report(config).render("json")``) is a stable structure; fields are only
ever added, and ``schema`` changes if one is removed or changes meaning::

    {
      "schema": "heapspy-report/1",
      "dump": "path/to/x.pb.gz",
      "sidecar": "path/to/x.json",
      "sidecar_status": "found",             # or "missing", or "no_totals"
      "sample_index": "inuse_space",
      "unit": "bytes",                       # or "count" for *_objects
      "period": 524288,                      # mean bytes between samples; 1 = exact
      "sampling": {"mode": "sampled", "rate": 524288, "frames": 64},
                                             # mode "exact" (rate 1) or "totals" (rate 0)
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
      "stacks": null,                        # a thread or task rule's dump: threads and
                                             # pending tasks grouped by stack (root
                                             # first): {"source": "agent" | "py-spy",
                                             # "threads": {"count", "left_out", "groups":
                                             # [{"count", "names", "frames", "awaits"}]},
                                             # "tasks": the same or null, "note"}
      "retainers": null,                     # which roots hold the top sites' live
                                             # samples (heapspy.retainers): {"sites":
                                             # [{"function", "filename", "line",
                                             # "live_bytes", "leak", "holders": [{"path":
                                             # [root, container...], "steps": [name or
                                             # "" per path element: ".attr", "['key']"],
                                             # "samples", "bytes", "share"}]}],
                                             # "elapsed", "cpu",
                                             # "longest_slice", "objects", "partial"}
      "census": null,                        # a heap census's walk (heapspy census):
                                             # objects, bytes, elapsed, cpu,
                                             # longest_slice, partial, stopped
      "by": null,                            # --by KEY: a label key (thread, thread_id,
                                             # task, coro); each row of "top" is then one
                                             # value of it in "function" ("(none)": no
                                             # such label), "filename" "", flat == cum
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

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heapspy.printable import printable
from heapspy.reporters.base import (
    Rendering,
    check_top,
    describe_sampling,
    format_time,
    format_value,
)
from heapspy.reporters.dump import Dump
from heapspy.reporters.sites import (
    Site,
    aggregate_labels,
    aggregate_sites,
    check_by,
    check_sample_index,
    is_sampled,
    site_variances,
)
from heapspy.reporters.totals import SIDECAR_FOUND, SIDECAR_NO_TOTALS, Totals
from heapspy.retainers import Retainers
from heapspy.retainers import table_lines as retainer_lines
from heapspy.rss import Breakdown, format_breakdown, growth_of, memory_of, verdict
from heapspy.runtime_stats import RuntimeStats
from heapspy.sampling import Sampling
from heapspy.scaling import format_error, relative_error
from heapspy.stack_groups import StackDump
from heapspy.units import format_bytes

REPORT_SCHEMA = "heapspy-report/1"


def size_class_label(k: int) -> str:
    """``(512 B, 1.0 KiB]`` for class 10: sizes above 2**(k-1), up to 2**k."""
    if k <= 0:
        return "0-1 B"
    return f"({format_bytes(2 ** (k - 1))}, {format_bytes(2**k)}]"


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
class ReportConfig:
    """What ``heapspy report`` was asked for."""

    dump: Path
    top: int = 10
    sample_index: str = ""
    by: str = ""  # a label key (model.LABEL_KEYS): rows are its values, not functions

    def __post_init__(self) -> None:
        check_top(self.top)
        check_sample_index(self.sample_index)
        check_by(self.by)


@dataclass(frozen=True)
class Report(Rendering):
    """One dump's summary and top table (``text()``, ``to_json()``: see the module)."""

    dump: Path
    sidecar: Path
    sidecar_status: str
    sample_index: str
    unit: str
    period: int
    sampling: Sampling  # how the figures were recorded (the sidecar's, else the period's)
    time_nanos: int
    duration_nanos: int
    comments: tuple[str, ...]
    totals: Totals
    total: int
    functions: int
    top: tuple[SiteRow, ...]
    sampled: bool = False  # the values are estimates with errors: see is_sampled
    runtime: RuntimeStats | None = None  # the target's GC, threads, tasks at dump time
    memory: Breakdown | None = None  # where the target's RSS was at dump time
    heap_growth: int | None = None  # the live heap's growth over the sidecar's series
    rss_growth: int | None = None  # and RSS's
    census: dict[str, Any] | None = None  # a heap census (heapspy.census): how the walk went
    stacks: StackDump | None = None  # a thread or task rule's dump: threads, tasks by stack
    by: str = ""  # rows are the values of this label (model.LABEL_KEYS), not functions
    retainers: Retainers | None = None  # which roots hold the top sites (heapspy.retainers)

    def text(self) -> str:
        return render_text(self)

    def to_json(self) -> dict[str, Any]:
        return report_to_json(self)


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


def build_report(config: ReportConfig) -> Report:
    """Read the dump and its sidecar and compute the summary and top table."""
    dump = Dump.load(config.dump)
    return report_of(dump, config)


def report_of(dump: Dump, config: ReportConfig) -> Report:
    """The summary and top table of a dump already loaded."""
    profile = dump.profile
    index = dump.sample_index(config.sample_index)
    status = dump.sidecar_status
    totals = dump.totals
    runtime = dump.runtime
    sites = (
        aggregate_labels(profile, index, config.by)
        if config.by
        else aggregate_sites(profile, index)
    )
    total = sum(sample.values[index] for sample in profile.samples)
    name, unit = profile.sample_types[index]
    sampled = is_sampled(profile, index)
    variances: dict[Site, tuple[float, float]] | None = None
    if sampled:
        variances = site_variances(profile, index, config.by)
    elif profile.period <= 1:
        variances = {}  # exact: every value's error is 0
    return Report(
        dump=dump.path,
        sidecar=dump.sidecar_path,
        sidecar_status=status,
        sample_index=name,
        unit=unit,
        period=profile.period,
        sampling=dump.sampling,
        time_nanos=profile.time_nanos,
        duration_nanos=profile.duration_nanos,
        comments=profile.comments,
        totals=totals,
        total=total,
        functions=len(sites),
        top=top_rows(sites, total, config.top, variances),
        sampled=sampled,
        runtime=runtime,
        memory=memory_of(dump.sidecar),
        heap_growth=growth_of(dump.sidecar, "heap"),
        rss_growth=growth_of(dump.sidecar, "rss"),
        census=census_of(dump.sidecar),
        stacks=dump.stacks,
        by=config.by,
        retainers=Retainers.from_json(dump.sidecar.get("retainers")) if dump.sidecar else None,
    )


def census_of(sidecar: dict[str, Any] | None) -> dict[str, Any] | None:
    """How a census's walk went, from its sidecar (``"kind": "census"``), each field
    checked: a sidecar may come from anywhere."""
    if not isinstance(sidecar, dict) or sidecar.get("kind") != "census":
        return None
    out: dict[str, Any] = {}
    for key in ("objects", "bytes", "elapsed", "cpu", "longest_slice"):
        value = sidecar.get(key)
        out[key] = value if type(value) in (int, float) else 0
    out["partial"] = sidecar.get("partial") is True
    stopped = sidecar.get("stopped")
    out["stopped"] = stopped[:200] if isinstance(stopped, str) else None
    return out


def census_lines(census: dict[str, Any]) -> list[str]:
    """What a census report says instead of a dump's allocation totals."""
    head = (
        f"Census: {int(census['objects']):,} objects, {format_bytes(int(census['bytes']))}, "
        f"walked in {float(census['elapsed']):.1f} s (CPU {float(census['cpu']):.1f} s, "
        f"longest slice {float(census['longest_slice']) * 1000:.0f} ms)"
    )
    if census["partial"]:
        head += f"; PARTIAL: {printable(census['stopped'] or 'stopped before its end')}"
    return [
        head,
        "Stacks are retention paths: the root first, containers on the way, the object's",
        "type as leaf; flat ranks types, cum ranks roots (see `heapspy census --help`).",
    ]


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
            f"{row.cum_pct:6.2f}%  {printable(row.site.describe())}"
        )
    return lines


def render_text(report: Report) -> str:
    """The report for people."""
    totals = report.totals
    lines = [f"Dump: {report.dump}"]
    if report.time_nanos:
        duration = f", over {report.duration_nanos / 1e9:.1f} s" if report.duration_nanos else ""
        lines.append(f"Time: {format_time(report.time_nanos)}{duration}")
    if report.census is not None:
        lines.extend(f"Comment: {printable(comment)}" for comment in report.comments)
        lines.extend(census_lines(report.census))
        lines.append("")
        lines.append(
            f"Top {len(report.top)} of {report.functions} frames by {report.sample_index} "
            f"(total {format_value(report.total, report.unit)}):"
        )
        lines.extend(table_lines(report.top, report.unit))
        return "\n".join(lines) + "\n"
    lines.append(f"Sampling: {describe_sampling(report.sampling)}")
    lines.extend(f"Comment: {printable(comment)}" for comment in report.comments)
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
    rows = f"values of the label {report.by!r}" if report.by else "functions"
    lines.append(
        f"Top {shown} of {report.functions} {rows} by {report.sample_index} "
        f"(total {format_value(report.total, report.unit)}):"
    )
    lines.extend(table_lines(report.top, report.unit, errors=report.sampled))
    if report.sampled:
        lines.append("±95%: sampling error (half-width of the value's 95% confidence interval)")
    if report.retainers is not None and report.retainers.sites:
        lines.append("")
        lines.append("What holds the top sites' live samples (the first root to reach them):")
        lines.extend(retainer_lines(report.retainers))
    if report.memory is not None:
        lines.append("")
        lines.append("Memory at dump time (where the RSS is; `heapspy trim PID` gives back what")
        lines.append("glibc holds free):")
        lines.extend(format_breakdown(report.memory, report.heap_growth, report.rss_growth))
    if report.stacks is not None:
        lines.append("")
        lines.extend(report.stacks.lines())
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
        "sampling": report.sampling.to_json(),
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
        "census": report.census,  # a heap census: objects, bytes, elapsed, partial, ...
        "stacks": None if report.stacks is None else report.stacks.to_json(),
        # per top site: its live samples by retention path (heapspy.retainers), or null
        "retainers": None if report.retainers is None else report.retainers.to_json(),
        "memory": None
        if report.memory is None
        else {
            **report.memory.to_json(),
            "verdict": verdict(report.memory, report.heap_growth, report.rss_growth),
        },
        "by": report.by or None,  # a label key: each row's "function" is its value
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
