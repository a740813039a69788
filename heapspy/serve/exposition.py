"""Prometheus' text exposition format (version 0.0.4) for the workers heapspy watches.

Names follow Prometheus' conventions: a ``heapspy_`` prefix, base units in the name
(``_bytes``, ``_seconds``), ``_total`` on counters, one ``# HELP`` and ``# TYPE`` per
family. Each worker is one set of series labelled ``pid`` and ``watch``; a figure a
worker does not have (frees in sampled mode, a cgroup limit it does not have) is left
out rather than written as 0, so a dashboard never averages in a made-up value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # gauge | counter
    help: str
    key: str  # the field of a worker's metrics (heapspy/serve/snapshot.py)


WORKER_FAMILIES: tuple[Family, ...] = (
    Family("heapspy_rss_bytes", "gauge", "Resident set size of the worker.", "rss"),
    Family(
        "heapspy_live_heap_bytes",
        "gauge",
        "Live Python heap allocated since attach (estimate in sampled mode).",
        "live_heap",
    ),
    Family(
        "heapspy_live_heap_error_bytes",
        "gauge",
        "Half-width of the 95% sampling interval of heapspy_live_heap_bytes (0 when exact).",
        "live_heap_err95",
    ),
    Family(
        "heapspy_allocated_bytes_total",
        "counter",
        "Bytes allocated through Python's allocators since attach (counted exactly).",
        "allocated_bytes",
    ),
    Family(
        "heapspy_allocations_total",
        "counter",
        "Allocations through Python's allocators since attach (counted exactly).",
        "allocations",
    ),
    Family("heapspy_freed_bytes_total", "counter", "Bytes freed since attach.", "freed_bytes"),
    Family("heapspy_frees_total", "counter", "Frees since attach.", "frees"),
    Family("heapspy_threads", "gauge", "Python threads in the worker.", "threads"),
    Family(
        "heapspy_gc_seconds_total",
        "counter",
        "Time the worker spent in garbage collection since attach.",
        "gc_seconds",
    ),
    Family("heapspy_open_fds", "gauge", "Open file descriptors of the worker.", "fds"),
    Family(
        "heapspy_sampling_rate_bytes",
        "gauge",
        "Mean bytes between samples (1: exact mode).",
        "rate",
    ),
    Family(
        "heapspy_session_start_time_seconds",
        "gauge",
        "Unix time the session attached.",
        "started",
    ),
    Family(
        "heapspy_cgroup_memory_working_set_bytes",
        "gauge",
        "Working set (usage minus inactive page cache) of the worker's memory cgroup.",
        "cgroup_working_set",
    ),
    Family(
        "heapspy_cgroup_memory_usage_bytes",
        "gauge",
        "Memory charged to the worker's memory cgroup, page cache included.",
        "cgroup_usage",
    ),
    Family(
        "heapspy_cgroup_memory_limit_bytes",
        "gauge",
        "Tightest memory limit of the worker's cgroup (absent when unlimited).",
        "cgroup_limit",
    ),
    Family(
        "heapspy_cgroup_oom_kills_total",
        "counter",
        "OOM kills in the worker's memory cgroup (kernel counter).",
        "cgroup_oom_kills",
    ),
    Family(
        "heapspy_memory_pressure_some_ratio",
        "gauge",
        "Share of the last 10 s some task stalled on memory (PSI avg10 / 100).",
        "psi_some_avg10",
    ),
)


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{escape_label(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


@dataclass
class Exposition:
    """Accumulates samples by family, then writes each family once."""

    _families: dict[str, tuple[str, str, list[str]]] = field(default_factory=dict)

    def add(
        self, name: str, kind: str, help_text: str, labels: Sequence[tuple[str, str]], value: float
    ) -> None:
        family = self._families.setdefault(name, (kind, help_text, []))
        family[2].append(f"{name}{_labels(labels)} {_number(value)}")

    def text(self) -> str:
        out: list[str] = []
        for name, (kind, help_text, lines) in self._families.items():
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            out.extend(lines)
        return "\n".join(out) + "\n"


def _number_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def add_worker(expo: Exposition, metrics: Mapping[str, Any]) -> None:
    """One worker's series, labelled by pid and watch name."""
    base = [("pid", str(metrics.get("pid", ""))), ("watch", str(metrics.get("watch") or ""))]
    expo.add("heapspy_up", "gauge", "1 while heapspy holds a session on the worker.", base, 1)
    for fam in WORKER_FAMILIES:
        value = _number_or_none(metrics.get(fam.key))
        if value is None:
            continue
        if fam.key == "psi_some_avg10":
            value = value / 100.0
        expo.add(fam.name, fam.kind, fam.help, base, value)
    per_generation = (
        ("gc_collections", "heapspy_gc_collections_total", "Garbage collections"),
        ("gc_collected", "heapspy_gc_collected_objects_total", "Objects the collector freed"),
        (
            "gc_uncollectable",
            "heapspy_gc_uncollectable_objects_total",
            "Objects the collector found uncollectable",
        ),
    )
    for key, name, what in per_generation:
        for generation, count in enumerate(metrics.get(key) or ()):
            number = _number_or_none(count)
            if number is not None:
                expo.add(
                    name,
                    "counter",
                    f"{what} per generation since attach.",
                    [*base, ("generation", str(generation))],
                    number,
                )
    for loop, count in enumerate(metrics.get("asyncio_tasks") or ()):
        number = _number_or_none(count)
        if number is not None:
            expo.add(
                "heapspy_asyncio_tasks",
                "gauge",
                "Unfinished asyncio tasks per running event loop.",
                [*base, ("loop", str(loop))],
                number,
            )
    for rule, count in sorted((metrics.get("dumps") or {}).items()):
        number = _number_or_none(count)
        if number is not None:
            expo.add(
                "heapspy_dumps_written_total",
                "counter",
                "Heap dumps written, by the rule that asked for them.",
                [*base, ("rule", str(rule))],
                number,
            )
