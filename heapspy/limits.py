"""What the limit rules (task-alloc, task-live, thread-alloc: ``heapspy.rules``) see of
each task and thread, from the session's samples and the shim's per-thread counters
(``heapspy.label_totals``), and what a limit's dump says of the offender.

Task figures are sampled estimates (each sample carries its task's label and is upscaled
as the stacks' are), given with their 95% sampling error; in exact mode too, from the
label samples the shim takes beside tracemalloc (``Aggregator.labelled``): tracemalloc
keeps live blocks only, so what a task allocated and freed is seen in its samples alone.
Tasks are told
apart by name (``Task.get_name()``, read at each sample): tasks sharing a name count
together; a task left with asyncio's default name is one of its own (``Task-<n>``).
Thread figures are exact: every allocation, per native thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from heapspy.aggregate import Aggregator
from heapspy.label_totals import by_label, thread_alloc
from heapspy.model import TASK
from heapspy.rules import Offender, Rule
from heapspy.scaling import relative_error

log = logging.getLogger("heapspy")

# A limit rule writes at most this many dumps at once (its largest offenders); the
# others beyond the limit in the same interval are logged.
MAX_LIMIT_DUMPS = 3


def task_figures(agg: Aggregator) -> tuple[tuple[Offender, ...], tuple[Offender, ...]]:
    """Per task name: (bytes allocated since it started, bytes of it live now)."""
    if agg.labelled is not None and not agg.sampling.estimates:
        agg = agg.labelled  # exact mode: its label samples
    sampled = agg.sampling.estimates
    allocated: list[Offender] = []
    live: list[Offender] = []
    for name, t in by_label(agg, TASK).items():
        for out, nbytes, variance in (
            (allocated, t.alloc_bytes, t.alloc_bytes_var),
            (live, t.live_bytes, t.live_bytes_var),
        ):
            error = relative_error(nbytes, variance) if sampled else None
            out.append(Offender(name, nbytes, error))
    return tuple(allocated), tuple(live)


def thread_figures(agg: Aggregator) -> tuple[Offender, ...]:
    """Per thread: exact bytes allocated since attach (the rule takes the growth)."""
    return tuple(
        Offender(f"{t.name} (tid {t.thread_id})", float(t.allocated_bytes))
        for t in thread_alloc(agg)
        if t.thread_id  # 0: the threads beyond the shim's table, together
    )


def offender_json(rule: Rule, offender: Offender) -> dict[str, Any]:
    """A limit dump's sidecar ``offender``: who, how much, how sure."""
    return {
        "rule": rule.text,
        "kind": "thread" if rule.kind == "thread-alloc" else "task",
        "name": offender.name,
        "bytes": round(offender.value),
        "err95_pct": None if offender.error is None else round(100 * offender.error, 2),
        "sampled": offender.error is not None,
        "what": offender.describe(rule),
    }


@dataclass(frozen=True)
class LimitDump:
    """One dump a limit that fired asks for: named after its offender."""

    rule: str  # the dump's rule: the limit's name and the offender's
    why: str
    offender: dict[str, Any]  # the sidecar's ``offender`` (offender_json)


def limit_dumps(rule: Rule, offenders: tuple[Offender, ...]) -> list[LimitDump]:
    """A limit fired: one dump per offender (at most MAX_LIMIT_DUMPS a round, the
    largest first, as ``offenders`` come), none with action=log; each offender logged."""
    out: list[LimitDump] = []
    for n, offender in enumerate(offenders):
        what = offender.describe(rule)
        dumps = rule.action == "dump" and n < MAX_LIMIT_DUMPS
        logged = "" if dumps else " (no dump)" if rule.action == "dump" else " (action=log)"
        log.warning("rule %s fired: %s%s", rule.name, what, logged)
        if dumps:
            out.append(
                LimitDump(
                    f"{rule.name}-{offender.name}",
                    f"{rule.name}: {what}",
                    offender_json(rule, offender),
                )
            )
    return out
