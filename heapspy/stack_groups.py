"""What every thread and every pending asyncio task was doing when a thread or task
rule fired, grouped by identical stack with counts: the "40 threads at handle
(server.py:31)" and "47 tasks at Queue.get (queues.py:186) <- consume (consumer.py:88)"
view of a leak.

It comes from the agent (``heapspy_agent.stacks``: threads and tasks), or, when the
agent cannot answer because another thread holds the GIL, from ``py-spy dump``
(threads only: py-spy does not see tasks). ``StackDump`` is the one definition of its
place in a dump's sidecar (``"stacks"``): the session writes it, ``heapspy report``
reads it back, checking each field (a sidecar may come from anywhere), and attach
prints its headlines when the rule fires.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from heapspy_agent import schema

from heapspy.model import Frame, Stack
from heapspy.printable import printable

AGENT = "agent"
PY_SPY = "py-spy"
THREAD = "thread"
TASK = "task"
SHOWN_NAMES = 3  # names a headline lists before "... N more"


@dataclass(frozen=True)
class StackGroup:
    """Threads or tasks with the same stack (root first) and, for a task, the type of
    what the innermost coroutine awaits (a Future, say): how many, and some names."""

    kind: str  # THREAD or TASK
    count: int
    names: tuple[str, ...]
    stack: Stack
    awaits: str | None = None

    def headline(self, callers: int = 2) -> str:
        """``40 threads (pool-1, pool-2, pool-3, ... 37 more) at handle (server.py:31)
        <- run (threading.py:1012)``: the innermost frame and a few callers."""
        noun = self.kind + ("s" if self.count != 1 else "")
        names = ", ".join(self.names[:SHOWN_NAMES])
        if self.count > SHOWN_NAMES and names:
            names += f", ... {self.count - min(SHOWN_NAMES, len(self.names))} more"
        text = f"{self.count} {noun}" + (f" ({names})" if names else "")
        inner = [_short(f) for f in reversed(self.stack[-(callers + 1) :])]
        if inner:
            text += " at " + " <- ".join(inner)
        else:
            text += " with no Python frame"
        if self.awaits:
            text += f", awaiting {self.awaits}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "names": list(self.names),
            "frames": [[f.function, f.filename, f.line] for f in self.stack],
            "awaits": self.awaits,
        }


def _short(frame: Frame) -> str:
    return f"{frame.function} ({os.path.basename(frame.filename)}:{frame.line})"


def _clip(value: object, limit: int) -> str | None:
    if not isinstance(value, str):
        return None
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _count(value: object, upper: int = 2**31) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= upper
    return value if ok else None  # type: ignore[return-value]


def _frames(raw: object) -> Stack | None:
    """Frames as ``[[function, file, line], ...]``, root first, each checked."""
    if not isinstance(raw, list) or len(raw) > schema.MAX_STACK_DEPTH:
        return None
    frames = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 3):
            return None
        function = _clip(item[0], schema.MAX_FUNCTION)
        filename = _clip(item[1], schema.MAX_TEXT)
        line = _count(item[2])
        if function is None or filename is None or line is None:
            return None
        frames.append(Frame(function, filename, line))
    return tuple(frames)


def read_group(kind: str, raw: object) -> StackGroup | None:
    """One group from a checked reply or from a sidecar; None when it is malformed."""
    if not isinstance(raw, Mapping):
        return None
    count, stack = _count(raw.get("count")), _frames(raw.get("frames"))
    if not count or stack is None:
        return None
    names_raw = raw.get("names")
    names = names_raw if isinstance(names_raw, list) else []
    kept = (_clip(n, schema.MAX_STACK_NAME) for n in names[: schema.MAX_GROUP_NAMES])
    return StackGroup(
        kind,
        count,
        tuple(n for n in kept if n is not None),
        stack,
        _clip(raw.get("awaits"), schema.MAX_FUNCTION),
    )


def merge(groups: Iterable[StackGroup]) -> tuple[StackGroup, ...]:
    """Groups with the same kind, stack and awaited type made one (an agent may split
    them), most common first."""
    merged: dict[tuple[str, Stack, str | None], StackGroup] = {}
    for g in groups:
        key = (g.kind, g.stack, g.awaits)
        seen = merged.get(key)
        if seen is not None:
            names = (seen.names + g.names)[: schema.MAX_GROUP_NAMES]
            g = StackGroup(g.kind, seen.count + g.count, names, g.stack, g.awaits)
        merged[key] = g
    return tuple(sorted(merged.values(), key=_order))


def _order(g: StackGroup) -> tuple[int, str, list[tuple[str, str, int]]]:
    return -g.count, g.kind, [(f.function, f.filename, f.line) for f in g.stack]


@dataclass(frozen=True)
class Census:
    """The threads or the tasks: how many there were, their groups, and how many of
    them the groups kept leave out (beyond the limits on groups and size)."""

    count: int
    groups: tuple[StackGroup, ...]
    left_out: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "left_out": self.left_out,
            "groups": [g.to_json() for g in self.groups],
        }

    @classmethod
    def read(cls, kind: str, raw: object) -> Census | None:
        if not isinstance(raw, Mapping):
            return None
        groups_raw = raw.get("groups")
        groups = groups_raw if isinstance(groups_raw, list) else []
        found = [read_group(kind, g) for g in groups[: schema.MAX_STACK_GROUPS]]
        kept = merge(g for g in found if g is not None)
        count = _count(raw.get("count"), 2**40)
        return cls(
            count if count is not None else sum(g.count for g in kept),
            kept,
            _count(raw.get("left_out"), 2**40) or 0,
        )


@dataclass(frozen=True)
class StackDump:
    """Threads (and, from the agent, tasks) grouped by stack at one moment."""

    source: str  # AGENT or PY_SPY
    threads: Census
    tasks: Census | None  # None: not known (py-spy sees threads only)
    note: str | None = None  # why the source is not the agent, say

    @classmethod
    def of_reply(cls, reply: Mapping[str, Any]) -> StackDump:
        """From the agent's REPLY to COMMAND stacks (checked by the channel)."""
        left = reply.get("left_out") or [0, 0]

        def census(kind: str, key: str, count_key: str, left_out: int) -> Census:
            groups = merge(g for g in (read_group(kind, raw) for raw in reply.get(key) or ()) if g)
            return Census(int(reply.get(count_key) or 0), groups, left_out)

        return cls(
            AGENT,
            census(THREAD, "threads", "thread_count", int(left[0])),
            census(TASK, "tasks", "task_count", int(left[1])),
        )

    @classmethod
    def of_py_spy(cls, threads: list[tuple[str, Stack]], note: str) -> StackDump:
        """From ``py-spy dump``'s threads: (name, stack root first) each."""
        groups = merge(StackGroup(THREAD, 1, (name,) if name else (), s) for name, s in threads)
        return cls(PY_SPY, Census(len(threads), groups), None, note)

    @classmethod
    def read(cls, document: Mapping[str, Any] | None) -> StackDump | None:
        """From a sidecar's ``"stacks"``; None when there is none or it is malformed."""
        raw = document.get("stacks") if isinstance(document, Mapping) else None
        if not isinstance(raw, Mapping):
            return None
        threads = Census.read(THREAD, raw.get("threads"))
        if threads is None:
            return None
        source = raw.get("source")
        return cls(
            source if source in (AGENT, PY_SPY) else "?",
            threads,
            Census.read(TASK, raw.get("tasks")),
            _clip(raw.get("note"), schema.MAX_TEXT),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "threads": self.threads.to_json(),
            "tasks": self.tasks.to_json() if self.tasks is not None else None,
            "note": self.note,
        }

    def headlines(self, limit: int = 3) -> list[str]:
        """The most common stacks of each kind, one line each: what attach prints."""
        lines = [g.headline() for g in self.threads.groups[:limit]]
        if self.tasks is not None:
            lines += [g.headline() for g in self.tasks.groups[:limit]]
        return [printable(line) for line in lines]

    def lines(self, limit: int = 10) -> list[str]:
        """The report's section: each kind's groups, innermost frame first (as py-spy
        and Go's goroutine dumps print them)."""
        out: list[str] = []
        parts = [(THREAD, self.threads)]
        if self.tasks is not None:
            parts.append((TASK, self.tasks))
        for kind, census in parts:
            title = "Threads" if kind == THREAD else "Asyncio tasks (pending)"
            distinct = len(census.groups)
            source = "the agent" if self.source == AGENT else self.source
            if out:
                out.append("")
            out.append(
                f"{title} at dump time: {census.count:,} in {distinct:,} distinct "
                f"stack{'s' if distinct != 1 else ''} (from {source}):"
            )
            for group in census.groups[:limit]:
                out.append("  " + printable(group.headline(callers=0)))
                out.extend(
                    f"      {printable(f.function)}  {printable(f.filename)}:{f.line}"
                    for f in reversed(group.stack)
                )
            hidden = census.groups[limit:]
            if hidden:
                held = sum(g.count for g in hidden)
                out.append(f"  ... {len(hidden):,} more stacks holding {held:,} {kind}s")
            if census.left_out:
                out.append(
                    f"  ({census.left_out:,} {kind}s in stacks the agent left out to stay "
                    "within its limits)"
                )
        if self.note:
            out.append(f"Note: {printable(self.note)}")
        return out
