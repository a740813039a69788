"""``heapspy diff``: which sites grew between two dumps, largest growth first.

The leak finder: take a dump, let the program run, take another, and diff them. Growth
is reported twice, per function (as ``pprof -top -diff_base`` would, but keeping files
apart, see ``reporters.sites``) and per source line (the ``file:line`` where the memory
was allocated, or through which it was). Rows are sorted by flat growth, then
cumulative growth: a leak shows up at the top as the function and the line that keep
allocating what is never freed.

JSON output (``build_diff(config).render("json")``) is a stable structure; fields are only ever
added, and ``schema`` changes if one is removed or changes meaning::

    {
      "schema": "heapspy-diff/1",
      "base": "base.pb.gz", "new": "new.pb.gz",
      "sample_index": "inuse_space", "unit": "bytes",
      "base_total": 1048576, "new_total": 5242880, "delta_total": 4194304,
      "functions_changed": 3, "lines_changed": 4,
      "notes": ["The dumps are of different processes (pid 41 and pid 42): ..."],
      "by": null,                # --by KEY (a label: thread, task, coro, type...): each
                                 # row of "functions" is then one value of it
                                 # ("(none)": no such label), flat == cum
      "functions": [{"function": "leaky", "filename": "/app/app.py", "line": 0,
                     "base_flat": 0, "new_flat": 4194304, "flat_delta": 4194304,
                     "base_cum": 0, "new_cum": 4194304, "cum_delta": 4194304}],
      "lines": [ ...the same fields, "line" set... ]
    }

``functions`` and ``lines`` hold at most ``--top`` rows each; sites whose values did not
change are left out, shrinking ones come last with negative deltas. ``notes`` warn when
the comparison is not what a leak hunt expects: dumps of different processes, sampled
differently, or given newest first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heapspy.errors import Remedy, UsageError
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
)

DIFF_SCHEMA = "heapspy-diff/1"


@dataclass(frozen=True)
class DiffConfig:
    """What ``heapspy diff`` was asked for."""

    base: Path
    new: Path
    top: int = 10
    sample_index: str = ""
    by: str = ""  # a label key (model.LABEL_KEYS): the first table's rows are its values

    def __post_init__(self) -> None:
        check_top(self.top)
        check_sample_index(self.sample_index)
        check_by(self.by)


@dataclass(frozen=True)
class DiffRow:
    site: Site
    base_flat: int
    new_flat: int
    base_cum: int
    new_cum: int

    @property
    def flat_delta(self) -> int:
        return self.new_flat - self.base_flat

    @property
    def cum_delta(self) -> int:
        return self.new_cum - self.base_cum


@dataclass(frozen=True)
class Diff(Rendering):
    """Two dumps compared site by site (``text()``, ``to_json()``: see the module)."""

    base: Path
    new: Path
    sample_index: str
    unit: str
    base_total: int
    new_total: int
    functions_changed: int
    lines_changed: int
    functions: tuple[DiffRow, ...]
    lines: tuple[DiffRow, ...]
    notes: tuple[str, ...] = ()
    by: str = ""  # the label the first table is grouped by ("": by function)

    @property
    def delta_total(self) -> int:
        return self.new_total - self.base_total

    def text(self) -> str:
        return render_text(self)

    def to_json(self) -> dict[str, Any]:
        return diff_to_json(self)


def diff_sites(
    base: dict[Site, tuple[int, int]], new: dict[Site, tuple[int, int]]
) -> list[DiffRow]:
    """Every site whose flat or cumulative value changed, by growth descending."""
    rows = []
    for site in base.keys() | new.keys():
        base_flat, base_cum = base.get(site, (0, 0))
        new_flat, new_cum = new.get(site, (0, 0))
        if base_flat != new_flat or base_cum != new_cum:
            rows.append(DiffRow(site, base_flat, new_flat, base_cum, new_cum))
    rows.sort(key=lambda row: (-row.flat_delta, -row.cum_delta, row.site))
    return rows


def comparison_notes(base_dump: Dump, new_dump: Dump) -> list[str]:
    """What makes this diff something other than one process's growth over time."""
    notes = []
    base, new = base_dump.profile, new_dump.profile
    pids = base_dump.pid, new_dump.pid
    if None not in pids and pids[0] != pids[1]:
        notes.append(
            f"The dumps are of different processes (pid {pids[0]} and pid {pids[1]}): the "
            "deltas compare two heaps, not one heap's growth."
        )
    if base_dump.sampling.period != new_dump.sampling.period:
        notes.append(
            f"The dumps were sampled differently (base: {describe_sampling(base_dump.sampling)}"
            f"; new: {describe_sampling(new_dump.sampling)}): small deltas may be sampling "
            "noise."
        )
    if base.time_nanos and new.time_nanos and new.time_nanos < base.time_nanos:
        notes.append(
            f"NEW was written before BASE ({format_time(new.time_nanos)} < "
            f"{format_time(base.time_nanos)}): swapped? Growth then shows as shrinkage."
        )
    return notes


def build_diff(config: DiffConfig) -> Diff:
    """Read both dumps and compare them site by site on one sample type."""
    base_dump, new_dump = Dump.load(config.base), Dump.load(config.new)
    base, new = base_dump.profile, new_dump.profile
    if not config.sample_index and (
        base.sample_types[base.default_index()] != new.sample_types[new.default_index()]
    ):
        raise UsageError(
            "The two dumps have different default sample types.",
            remedies=(Remedy("sample_index"),),
        )
    base_index = base_dump.sample_index(config.sample_index)
    new_index = new_dump.sample_index(config.sample_index)
    name, unit = new.sample_types[new_index]
    if config.by:  # e.g. which types grew: --by type
        functions = diff_sites(
            aggregate_labels(base, base_index, config.by),
            aggregate_labels(new, new_index, config.by),
        )
    else:
        functions = diff_sites(aggregate_sites(base, base_index), aggregate_sites(new, new_index))
    lines = diff_sites(
        aggregate_sites(base, base_index, lines=True),
        aggregate_sites(new, new_index, lines=True),
    )
    return Diff(
        base=config.base,
        new=config.new,
        sample_index=name,
        unit=unit,
        base_total=sum(sample.values[base_index] for sample in base.samples),
        new_total=sum(sample.values[new_index] for sample in new.samples),
        functions_changed=len(functions),
        lines_changed=len(lines),
        functions=tuple(functions[: config.top]),
        lines=tuple(lines[: config.top]),
        notes=tuple(comparison_notes(base_dump, new_dump)),
        by=config.by,
    )


def _table(rows: tuple[DiffRow, ...], unit: str) -> list[str]:
    def value(number: int, signed: bool = False) -> str:
        return format_value(number, unit, signed=signed)

    lines = [f"{'flat delta':>12} {'cum delta':>12} {'base flat':>12} {'new flat':>12}  site"]
    for row in rows:
        marker = "  (new)" if row.base_cum == 0 else ("  (gone)" if row.new_cum == 0 else "")
        lines.append(
            f"{value(row.flat_delta, True):>12} {value(row.cum_delta, True):>12} "
            f"{value(row.base_flat):>12} {value(row.new_flat):>12}  "
            f"{printable(row.site.describe())}{marker}"
        )
    return lines


def render_text(diff: Diff) -> str:
    """The diff for people."""
    unit = diff.unit
    lines = [
        f"Base: {diff.base}",
        f"New:  {diff.new}",
        f"Sample index: {diff.sample_index}",
        f"Total: {format_value(diff.base_total, unit)} -> {format_value(diff.new_total, unit)}"
        f" ({format_value(diff.delta_total, unit, signed=True)})",
        *(f"Note: {note}" for note in diff.notes),
        "",
    ]
    if not diff.functions_changed:
        lines.append("No site changed.")
        return "\n".join(lines) + "\n"
    rows = f"value of the label {diff.by!r}" if diff.by else "function"
    lines.append(f"Growth by {rows} (top {len(diff.functions)} of {diff.functions_changed}):")
    lines.extend(_table(diff.functions, unit))
    lines.append("")
    lines.append(f"Growth by line (top {len(diff.lines)} of {diff.lines_changed}):")
    lines.extend(_table(diff.lines, unit))
    return "\n".join(lines) + "\n"


def _row_json(row: DiffRow) -> dict[str, Any]:
    return {
        "function": row.site.function,
        "filename": row.site.filename,
        "line": row.site.line,
        "base_flat": row.base_flat,
        "new_flat": row.new_flat,
        "flat_delta": row.flat_delta,
        "base_cum": row.base_cum,
        "new_cum": row.new_cum,
        "cum_delta": row.cum_delta,
    }


def diff_to_json(diff: Diff) -> dict[str, Any]:
    """The documented JSON structure (see the module docstring)."""
    return {
        "schema": DIFF_SCHEMA,
        "base": str(diff.base),
        "new": str(diff.new),
        "sample_index": diff.sample_index,
        "unit": diff.unit,
        "base_total": diff.base_total,
        "new_total": diff.new_total,
        "delta_total": diff.delta_total,
        "functions_changed": diff.functions_changed,
        "lines_changed": diff.lines_changed,
        "notes": list(diff.notes),
        "by": diff.by or None,
        "functions": [_row_json(row) for row in diff.functions],
        "lines": [_row_json(row) for row in diff.lines],
    }
