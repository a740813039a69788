"""Dump rules: when a session writes a heap dump by itself.

Grammar (one rule per ``--dump-on``; an optional ``,cooldown=DURATION`` follows any):

    rss>SIZE                 resident set size above SIZE        e.g. rss>1.5GiB
    heap>SIZE                estimated live Python heap above SIZE e.g. heap>500MiB
    growth>SIZE/DURATION     RSS grew by SIZE within DURATION      e.g. growth>100MiB/10m
    heap-growth>SIZE/DURATION  the same for the live Python heap
    every DURATION           periodically                          e.g. every 15m
    leak[:K]                 a site's live bytes grew in each of the last K intervals (5)
    cgroup>PCT%              the memory cgroup's working set above PCT of its limit e.g. cgroup>90%
    psi>PCT%                 memory pressure: some task stalled more than PCT of the last 10 s
    psi-full>PCT%            the same for all tasks stalled at once (the cgroup's, else the host's)
    native>SIZE              the C allocator's in-use bytes (glibc's heaps and mmapped chunks)
    unexplained>SIZE         RSS that no mapping or allocator accounts for (heapspy/rss.py)
    threads>N                more than N threads (heapspy's agent thread not counted)
    thread-growth>N/DURATION the thread count grew by more than N within DURATION
    tasks>N                  more than N pending asyncio tasks, over every loop
    task-growth>N/DURATION   the same for the pending task count   e.g. task-growth>100/10m

Threshold rules fire when the condition becomes true and then at most once per cooldown
(default 5m) while it stays true; ``every`` has no cooldown, its period is its own.
A thread or task rule's dump also holds every thread's stack and every pending task's
coroutine stack, grouped by identical stack (``heapspy.stack_groups``).

Options follow the rule after commas: ``cooldown=DURATION``, and ``action=log`` to only
log that the rule fired (and, for a thread or task rule, the stacks), writing no dump.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from heapspy.errors import UsageError
from heapspy.units import format_age, parse_duration, parse_size

GRAMMAR = (
    "Rules: rss>SIZE, heap>SIZE, growth>SIZE/DURATION, heap-growth>SIZE/DURATION, "
    "every DURATION, leak[:K], cgroup>PCT%, psi>PCT%, psi-full>PCT%, native>SIZE, "
    "unexplained>SIZE, threads>N, thread-growth>N/DURATION, tasks>N, "
    "task-growth>N/DURATION; each may end with ,cooldown=DURATION and ,action=log (e.g. "
    "'rss>1.5GiB', 'growth>100MiB/10m,cooldown=30m', 'every 15m', 'leak:5', 'cgroup>90%', "
    "'psi>20%', 'thread-growth>50/10m', 'tasks>10000,action=log')."
)
ACTIONS = ("dump", "log")
DEFAULT_COOLDOWN = 300.0

_THRESHOLD = re.compile(r"^(rss|heap|native|unexplained)\s*>\s*(\S+)$")
_GROWTH = re.compile(r"^(growth|heap-growth)\s*>\s*([^/\s]+)\s*/\s*(\S+)$")
_EVERY = re.compile(r"^every\s+(\S+)$")
_LEAK = re.compile(r"^leak(?::(\d+))?$")
_PERCENT = re.compile(r"^(cgroup|psi|psi-full)\s*>\s*([0-9]+(?:\.[0-9]+)?)\s*%?$")
_COUNT = re.compile(r"^(threads|tasks)\s*>\s*([0-9]+)$")
_COUNT_GROWTH = re.compile(r"^(thread-growth|task-growth)\s*>\s*([0-9]+)\s*/\s*(\S+)$")
# the rules whose dump holds every thread's and task's stack, grouped
STACK_RULES = ("threads", "thread-growth", "tasks", "task-growth")


@dataclass(frozen=True)
class Rule:
    text: str
    # rss | heap | growth | heap-growth | every | leak | cgroup | psi | psi-full | native
    # | unexplained | threads | thread-growth | tasks | task-growth
    kind: str
    size: int = 0
    window: float = 0.0  # growth window, or the period of `every`
    intervals: int = 0  # leak: K
    percent: float = 0.0  # cgroup, psi, psi-full: the threshold in percent
    cooldown: float = DEFAULT_COOLDOWN
    count: int = 0  # threads, tasks (and their growth): the threshold
    action: str = "dump"  # or "log": say that it fired, write nothing

    @property
    def wants_stacks(self) -> bool:
        """Whether its dump holds every thread's and task's stack, grouped."""
        return self.kind in STACK_RULES

    @property
    def name(self) -> str:
        """Short form used in dump file names."""
        return self.text.split(",")[0].replace(" ", "")


def _bad(text: str, why: str) -> UsageError:
    return UsageError(f"Invalid dump rule {text!r}: {why}.", hint=GRAMMAR)


def _options(text: str, tail: str) -> tuple[float, str]:
    """``cooldown=DURATION`` and ``action=dump|log``, comma-separated after the rule."""
    cooldown, action = DEFAULT_COOLDOWN, "dump"
    for option in tail.split(","):
        key, _, value = (part.strip() for part in option.partition("="))
        if key == "cooldown" and value:
            try:
                cooldown = parse_duration(value, "cooldown")
            except UsageError as exc:
                raise _bad(text, exc.message.rstrip(".")) from None
        elif key == "action" and value in ACTIONS:
            action = value
        else:
            raise _bad(text, f"unknown option {option.strip()!r} (cooldown=DURATION, action=log)")
    return cooldown, action


def parse_rule(text: str) -> Rule:
    body, _, tail = text.strip().partition(",")
    body = body.strip()
    cooldown, action = _options(text, tail) if tail else (DEFAULT_COOLDOWN, "dump")
    rule = _parse_body(text, body, cooldown)
    return replace(rule, action=action) if action != rule.action else rule


def _parse_body(text: str, body: str, cooldown: float) -> Rule:
    try:
        if m := _THRESHOLD.match(body):
            size = parse_size(m[2], f"{m[1]} threshold")
            if size <= 0:
                raise _bad(text, "the threshold must be positive")
            return Rule(text, m[1], size=size, cooldown=cooldown)
        if m := _GROWTH.match(body):
            size = parse_size(m[2], "growth")
            window = parse_duration(m[3], "growth window")
            if size <= 0 or window <= 0:
                raise _bad(text, "growth and window must be positive")
            return Rule(text, m[1], size=size, window=window, cooldown=cooldown)
        if m := _EVERY.match(body):
            period = parse_duration(m[1], "period")
            if period < 1:
                raise _bad(text, "the period must be at least 1s")
            return Rule(text, "every", window=period, cooldown=0.0)
        if m := _PERCENT.match(body):
            percent = float(m[2])
            if not 0 < percent < 100:
                raise _bad(text, "the threshold must be a percentage between 0 and 100")
            return Rule(text, m[1], percent=percent, cooldown=cooldown)
        if m := _COUNT.match(body):
            return Rule(text, m[1], count=int(m[2]), cooldown=cooldown)
        if m := _COUNT_GROWTH.match(body):
            window = parse_duration(m[3], "growth window")
            if int(m[2]) <= 0 or window <= 0:
                raise _bad(text, "growth and window must be positive")
            return Rule(text, m[1], count=int(m[2]), window=window, cooldown=cooldown)
        if m := _LEAK.match(body):
            k = int(m[1] or 5)
            if k < 2:
                raise _bad(text, "leak needs at least 2 intervals")
            return Rule(text, "leak", intervals=k, cooldown=cooldown)
    except UsageError as exc:
        if exc.hint == GRAMMAR:
            raise
        raise _bad(text, exc.message.rstrip(".")) from None
    raise _bad(text, "not a rule heapspy knows")


@dataclass(frozen=True)
class Observation:
    """What the rules look at, once per interval."""

    time: float
    rss: int | None
    heap: int
    cgroup_used: float | None = None  # working set / limit of the memory cgroup, 0..1
    psi_some: float | None = None  # memory pressure avg10, percent
    psi_full: float | None = None
    native: int | None = None  # C allocator in use (measured every MEMORY_EVERY seconds)
    unexplained: int | None = None
    threads: int | None = None  # the target's threads, the agent's own not counted
    tasks: int | None = None  # pending asyncio tasks over every loop (0: no loop)


class RuleEngine:
    """Decides, interval by interval, which rules fire."""

    def __init__(self, rules: Sequence[Rule], start: float) -> None:
        self.rules = tuple(rules)
        self._last_fired: dict[Rule, float] = {}
        self._start = start
        self._history: list[Observation] = []

    @property
    def needs_memory(self) -> bool:
        """Whether a rule reads the RSS breakdown (measured in the target: not free)."""
        return any(r.kind in ("native", "unexplained") for r in self.rules)

    @property
    def leak_intervals(self) -> int:
        return max((r.intervals for r in self.rules if r.kind == "leak"), default=0)

    def observe(self, obs: Observation, growing_sites: Sequence[int] = ()) -> list[Rule]:
        """Record one interval; ``growing_sites[k]`` = sites that grew k+1 intervals running."""
        self._history.append(obs)
        horizon = max((r.window for r in self.rules if "growth" in r.kind), default=0.0)
        while len(self._history) > 2 and self._history[1].time < obs.time - horizon:
            self._history.pop(0)
        fired = []
        for rule in self.rules:
            if self._holds(rule, obs, growing_sites) and self._cooled(rule, obs.time):
                self._last_fired[rule] = obs.time
                fired.append(rule)
        return fired

    def _cooled(self, rule: Rule, now: float) -> bool:
        last = self._last_fired.get(rule)
        if rule.kind == "every":
            return now - (last if last is not None else self._start) >= rule.window
        return last is None or now - last >= rule.cooldown

    def _holds(self, rule: Rule, obs: Observation, growing: Sequence[int]) -> bool:
        if rule.kind == "rss":
            return obs.rss is not None and obs.rss > rule.size
        if rule.kind == "heap":
            return obs.heap > rule.size
        if rule.kind == "native":
            return obs.native is not None and obs.native > rule.size
        if rule.kind == "unexplained":
            return obs.unexplained is not None and obs.unexplained > rule.size
        if rule.kind == "threads":
            return obs.threads is not None and obs.threads > rule.count
        if rule.kind == "tasks":
            return obs.tasks is not None and obs.tasks > rule.count
        if rule.kind in ("growth", "heap-growth", "thread-growth", "task-growth"):
            return self._grew(rule, obs)
        if rule.kind == "cgroup":
            return obs.cgroup_used is not None and obs.cgroup_used * 100 > rule.percent
        if rule.kind == "psi":
            return obs.psi_some is not None and obs.psi_some > rule.percent
        if rule.kind == "psi-full":
            return obs.psi_full is not None and obs.psi_full > rule.percent
        if rule.kind == "leak":
            return len(growing) >= rule.intervals and growing[rule.intervals - 1] > 0
        return rule.kind == "every"

    def _grew(self, rule: Rule, obs: Observation) -> bool:
        grown = self.growth(rule, obs)
        return grown is not None and grown > (rule.count if rule.kind in STACK_RULES else rule.size)

    def growth(self, rule: Rule, obs: Observation) -> int | None:
        """How much a growth rule's value grew within its window, up to ``obs``."""
        value = _GROWN[rule.kind]
        now = value(obs)
        if now is None:
            return None
        window = [o for o in self._history if o.time >= obs.time - rule.window]
        lows = [v for v in (value(o) for o in window) if v is not None]
        return now - min(lows) if lows else None

    def explain(self, rule: Rule, obs: Observation) -> str:
        """What a thread or task rule saw when it fired: ``41 threads (+40 within 10m)``."""
        if rule.kind not in STACK_RULES:
            return rule.text
        what = "threads" if rule.kind.startswith("thread") else "pending tasks"
        now = obs.threads if what == "threads" else obs.tasks
        text = f"{now} {what}"
        if rule.kind.endswith("growth"):
            text += f" (+{self.growth(rule, obs)} within {format_age(rule.window)})"
        return text


_GROWN: dict[str, Callable[[Observation], int | None]] = {
    "growth": lambda o: o.rss,
    "heap-growth": lambda o: o.heap,
    "thread-growth": lambda o: o.threads,
    "task-growth": lambda o: o.tasks,
}
