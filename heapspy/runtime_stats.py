"""The target's runtime statistics as the agent reports them each interval (garbage
collections and their time, threads, asyncio tasks), read once from the agent's facts
or a sidecar, and put in one line for people."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _ints(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, int) and not isinstance(v, bool))


@dataclass(frozen=True)
class RuntimeStats:
    """Since attach: collections, objects collected and uncollectable per generation,
    time in collection; now: threads (and their names), unfinished tasks per loop."""

    gc_collections: tuple[int, ...] = ()
    gc_collected: tuple[int, ...] = ()
    gc_uncollectable: tuple[int, ...] = ()
    gc_seconds: float | None = None
    threads: int | None = None
    thread_names: tuple[str, ...] = ()
    asyncio_tasks: tuple[int, ...] = ()

    @classmethod
    def from_facts(cls, facts: Mapping[str, Any] | None) -> RuntimeStats | None:
        """From the agent's facts (a session's, or a sidecar's ``facts``)."""
        if not facts:
            return None
        seconds = facts.get("gc_seconds")
        threads = facts.get("threads")
        names = facts.get("thread_names")
        return cls(
            gc_collections=_ints(facts.get("gc_collections")),
            gc_collected=_ints(facts.get("gc_collected")),
            gc_uncollectable=_ints(facts.get("gc_uncollectable")),
            gc_seconds=float(seconds) if isinstance(seconds, (int, float)) else None,
            threads=threads if isinstance(threads, int) else None,
            thread_names=tuple(str(n) for n in names) if isinstance(names, list) else (),
            asyncio_tasks=_ints(facts.get("asyncio_tasks")),
        )

    def line(self) -> str:
        """``GC 41 collections (0/0/41 by generation... )`` in one line, for reports."""
        parts = []
        if self.gc_collections:
            by_gen = "/".join(str(c) for c in self.gc_collections)
            gc = f"GC {sum(self.gc_collections):,} collections ({by_gen} by generation"
            if self.gc_seconds is not None:
                gc += f", {self.gc_seconds:.3g} s"
            gc += ")"
            if self.gc_collected:
                gc += f", {sum(self.gc_collected):,} objects collected"
            if self.gc_uncollectable and sum(self.gc_uncollectable):
                gc += f", {sum(self.gc_uncollectable):,} uncollectable"
            parts.append(gc)
        if self.threads is not None:
            parts.append(f"{self.threads} threads")
        if self.asyncio_tasks:
            loops = len(self.asyncio_tasks)
            parts.append(
                f"{sum(self.asyncio_tasks):,} asyncio tasks in {loops} "
                f"loop{'s' if loops > 1 else ''}"
            )
        return " · ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "gc_collections": list(self.gc_collections),
            "gc_collected": list(self.gc_collected),
            "gc_uncollectable": list(self.gc_uncollectable),
            "gc_seconds": self.gc_seconds,
            "threads": self.threads,
            "thread_names": list(self.thread_names),
            "asyncio_tasks": list(self.asyncio_tasks),
        }
