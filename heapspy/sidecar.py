"""What a dump's sidecar (``<dump>.json``) holds, written by a session and read back by
the reporters.

The profile keeps what pprof can say; the sidecar keeps the rest: who the target was,
how it was sampled, the exact totals, the time series, the cgroup, the RSS breakdown,
the census at attach. ``Sidecar`` is the one definition of its layout (``to_json``);
the readers take who the target was back through ``Header.read``, the sampling through
``heapspy.sampling.read_sampling`` and the totals through ``heapspy.reporters.totals``,
each checking what it reads: a sidecar may come from a machine heapspy does not trust.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from heapspy.aggregate import Point
from heapspy.model import AllocTotals
from heapspy.sampling import Sampling

SERIES_COLUMNS = (
    "time",
    "rss",
    "heap",
    "cpu_percent",
    "fds",
    "uss",
    "gc_seconds",
    "threads",
    "asyncio_tasks",
    "rate",  # the sampling rate in force at that point (see rate_changes)
)
SERIES_KEPT = 120  # the last points of the series a sidecar keeps


@dataclass(frozen=True)
class Sidecar:
    pid: int
    command_line: list[str]
    executable: str | None
    python: str
    sampling: Sampling  # as the agent reported it, after any `heapspy rate`
    rate_changes: tuple[tuple[float, int], ...]  # (unix time, rate): at attach, then changes
    rule: str
    heap_estimate: int
    series: tuple[Point, ...]
    totals: AllocTotals | None
    agent_totals: dict[str, Any]
    facts: dict[str, Any]
    cgroup: dict[str, object] | None
    dropped_stacks: int  # what the session did not keep (limits in aggregate.py)
    dropped_agent_sites: int  # what the agent left out to keep its frames small
    protocol_violation: str | None
    census: dict[str, Any] | None  # the heap as it was at attach, beside the samples since
    memory: dict[str, Any] | None = None  # where the RSS was (heapspy/rss.py)
    # a thread or task rule's dump: threads and tasks grouped by stack (stack_groups.py)
    stacks: dict[str, Any] | None = None
    labels: dict[str, Any] | None = None  # who allocated: label_totals.labels_summary
    # a limit rule's dump: the task or thread beyond the limit (heapspy.limits)
    offender: dict[str, Any] | None = None
    # which roots hold the top sites' live samples (heapspy.retainers.Retainers.to_json)
    retainers: dict[str, Any] | None = None
    # collections and the reports that carried them (fewer with idle_report on)
    reporting: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        totals = self.totals
        return {
            "pid": self.pid,
            "command_line": self.command_line,
            "executable": self.executable,
            "python": self.python,
            # how the figures were recorded: heapspy.sampling.read_sampling reads it
            # back; mode, rate and frames repeat it for readers of older heapspy
            "sampling": self.sampling.to_json(),
            "mode": self.sampling.mode,
            # the rate now, as the dump's period; earlier samples were taken at the rates
            # of rate_changes (their estimates and variances are each at its own rate)
            "rate": self.sampling.rate,
            "rate_changes": [[when, rate] for when, rate in self.rate_changes],
            "frames": self.sampling.frames,
            "rule": self.rule,
            "heap_estimate": self.heap_estimate,
            "series_columns": list(SERIES_COLUMNS),
            "rss_series": [
                [
                    p.time,
                    p.rss,
                    p.heap,
                    p.cpu,
                    p.fds,
                    p.uss,
                    p.gc_seconds,
                    p.threads,
                    p.asyncio_tasks,
                    p.rate,
                ]
                for p in self.series[-SERIES_KEPT:]
            ],
            "totals": None
            if totals is None
            else {
                "allocated_bytes": totals.allocated_bytes,
                "allocations": totals.allocations,
                "freed_bytes": totals.freed_bytes,
                "frees": totals.frees,
                "size_classes": [list(c) for c in totals.size_classes],
            },
            "agent_totals": self.agent_totals,
            "facts": self.facts,
            "cgroup": self.cgroup,
            "dropped": {
                "stacks": self.dropped_stacks,
                "agent_sites": self.dropped_agent_sites,
                # samples the shim could not give a stack: its stack table was full
                "overflow_samples": int(self.agent_totals.get("overflow_samples", 0) or 0),
            },
            # stacks the agent evicted (nothing live, quiet): their figures are kept here
            "evicted_stacks": int(self.agent_totals.get("evicted_stacks", 0) or 0),
            "protocol_violation": self.protocol_violation,
            "census": self.census,
            "memory": self.memory,
            "stacks": self.stacks,
            # per thread, task and coroutine: [value, alloc_bytes, live_bytes] (sampled
            # estimates), most live first; thread_alloc: [native id, exact bytes, name];
            # split (exact mode): how exact bytes were split by thread and task
            "labels": self.labels,
            "offender": self.offender,
            "retainers": self.retainers,
            # {"intervals", "reports", "idle_report"}: with idle_report on, quiet
            # collections were merged into fewer reports (nothing live had changed)
            "reporting": self.reporting,
        }


def _text(document: dict[str, Any], key: str) -> str | None:
    value = document.get(key)
    return value if isinstance(value, str) and value else None


def _int(document: dict[str, Any], key: str) -> int | None:
    value = document.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Header:
    """Who and what a dump is of, as the readers take it from a sidecar: each field
    checked, None where it is missing or of the wrong type (informational: a reader
    leaves it out rather than refusing the dump)."""

    pid: int | None = None
    command_line: tuple[str, ...] | None = None
    executable: str | None = None
    python: str | None = None
    mode: str | None = None
    rule: str | None = None

    @classmethod
    def read(cls, document: dict[str, Any] | None) -> Header:
        if document is None:
            return cls()
        argv = document.get("command_line")
        command_line: tuple[str, ...] | None = None
        if isinstance(argv, list) and all(isinstance(a, str) for a in argv):
            command_line = tuple(argv)
        return cls(
            pid=_int(document, "pid"),
            command_line=command_line,
            executable=_text(document, "executable"),
            python=_text(document, "python"),
            mode=_text(document, "mode"),
            rule=_text(document, "rule"),
        )
