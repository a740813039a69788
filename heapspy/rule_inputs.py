"""What the dump rules (``heapspy.rules``) look at each interval, gathered from what the
session holds: the series' newest point, the agent's runtime facts (threads, tasks), the
memory cgroup, the RSS breakdown and, for the limit rules, each task's and thread's
figures (``heapspy.limits``)."""

from __future__ import annotations

from typing import Any

from heapspy.aggregate import Aggregator, Point
from heapspy.cgroup import MemoryState
from heapspy.limits import task_figures, thread_figures
from heapspy.rss import Breakdown
from heapspy.rules import Observation, Offender
from heapspy.runtime_stats import RuntimeStats


def thread_task_counts(facts: dict[str, Any]) -> tuple[int | None, int | None]:
    """The thread and task counts the rules look at: the target's threads without the
    agent's own, pending tasks over every loop (0 where no loop runs)."""
    stats = RuntimeStats.from_facts(facts)
    if stats is None:
        return None, None
    return (stats.threads - 1 if stats.threads else None), sum(stats.asyncio_tasks)


def observation(
    point: Point,
    agg: Aggregator,
    memory: MemoryState | None,
    account: Breakdown | None,
    limits: bool,
) -> Observation:
    """This interval's observation. ``memory``: the cgroup's state; ``account``: the RSS
    breakdown (None: no rule reads it); ``limits``: a limit rule is set (the per task and
    thread figures cost a walk over every site)."""
    threads, tasks = thread_task_counts(agg.facts)
    task_alloc: tuple[Offender, ...] = ()
    task_live: tuple[Offender, ...] = ()
    thread_alloc: tuple[Offender, ...] = ()
    if limits:
        task_alloc, task_live = task_figures(agg)
        thread_alloc = thread_figures(agg)
    return Observation(
        point.time,
        point.rss,
        point.heap,
        cgroup_used=memory.used_fraction if memory else None,
        psi_some=memory.psi_some if memory else None,
        psi_full=memory.psi_full if memory else None,
        native=account.native_in_use if account else None,
        unexplained=account.unexplained if account else None,
        threads=threads,
        tasks=tasks,
        task_alloc=task_alloc,
        task_live=task_live,
        thread_alloc=thread_alloc,
    )
