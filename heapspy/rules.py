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
    task-alloc>SIZE          one asyncio task allocated more than SIZE since it started
    task-live>SIZE           one task's allocations still live add up to more than SIZE
    thread-alloc>SIZE/DURATION  one thread allocated more than SIZE within DURATION

Threshold rules fire when the condition becomes true and then at most once per cooldown
(default 5m) while it stays true; ``every`` has no cooldown, its period is its own.
A thread or task rule's dump also holds every thread's stack and every pending task's
coroutine stack, grouped by identical stack (``heapspy.stack_groups``).

Limits (task-alloc, task-live, thread-alloc) are the per-goroutine limits of Go services,
from outside: they look at each task (by name, as ``Task.get_name()`` gives it: tasks
sharing a name count together) or thread (by native id) on its own, and fire for the
ones beyond the limit, naming them, once per offender per cooldown (task-alloc, which
only grows, once per offender). The task figures are sampled estimates, upscaled from
the samples that carry the task's label, each with its 95% error bar; thread-alloc is
exact (the shim counts every allocation per thread).

Options follow the rule after commas: ``cooldown=DURATION``, and ``action=log`` to only
log that the rule fired (and, for a thread or task rule, the stacks), writing no dump.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from heapspy.errors import UsageError
from heapspy.scaling import format_error
from heapspy.units import format_age, format_bytes, parse_duration, parse_size

GRAMMAR = (
    "Rules: rss>SIZE, heap>SIZE, growth>SIZE/DURATION, heap-growth>SIZE/DURATION, "
    "every DURATION, leak[:K], cgroup>PCT%, psi>PCT%, psi-full>PCT%, native>SIZE, "
    "unexplained>SIZE, threads>N, thread-growth>N/DURATION, tasks>N, "
    "task-growth>N/DURATION; each may end with ,cooldown=DURATION and ,action=log (e.g. "
    "'rss>1.5GiB', 'growth>100MiB/10m,cooldown=30m', 'every 15m', 'leak:5', 'cgroup>90%', "
    "'psi>20%', 'thread-growth>50/10m', 'tasks>10000,action=log'); limits per task or "
    "thread: task-alloc>SIZE, task-live>SIZE (sampled estimates), thread-alloc>SIZE/DURATION."
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
_LIMIT = re.compile(r"^(task-alloc|task-live)\s*>\s*(\S+)$")
_LIMIT_RATE = re.compile(r"^(thread-alloc)\s*>\s*([^/\s]+)\s*/\s*(\S+)$")
# the rules that look at each task or thread on its own and name the offenders
LIMIT_RULES = ("task-alloc", "task-live", "thread-alloc")


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
    def is_limit(self) -> bool:
        """Whether it looks at each task or thread and names the offenders."""
        return self.kind in LIMIT_RULES

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
        if m := _LIMIT.match(body):
            size = parse_size(m[2], f"{m[1]} limit")
            if size <= 0:
                raise _bad(text, "the limit must be positive")
            return Rule(text, m[1], size=size, cooldown=cooldown)
        if m := _LIMIT_RATE.match(body):
            size = parse_size(m[2], "thread-alloc limit")
            window = parse_duration(m[3], "thread-alloc window")
            if size <= 0 or window <= 0:
                raise _bad(text, "the limit and its window must be positive")
            return Rule(text, m[1], size=size, window=window, cooldown=cooldown)
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
class Offender:
    """One task or thread as a limit rule sees it: its name, its figure in bytes and the
    figure's 95% sampling error as a fraction of it (None: exact)."""

    name: str
    value: float
    error: float | None = None

    def describe(self, rule: Rule) -> str:
        """``task 'import-batch' allocated 300.0 MiB (±4%, sampled) since it started``."""
        error = f" ({format_error(self.error)}, sampled)" if self.error is not None else ""
        amount = f"{format_bytes(self.value)}{error}"
        if rule.kind == "task-alloc":
            return f"task {self.name!r} allocated {amount} since it started"
        if rule.kind == "task-live":
            return f"task {self.name!r} holds {amount} of live allocations"
        return f"thread {self.name} allocated {amount} within {format_age(rule.window)}"


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
    # per task name: estimated bytes allocated since it started, and live now
    task_alloc: tuple[Offender, ...] = ()
    task_live: tuple[Offender, ...] = ()
    # per thread: exact bytes allocated since attach (the rule takes the growth)
    thread_alloc: tuple[Offender, ...] = ()


class RuleEngine:
    """Decides, interval by interval, which rules fire."""

    def __init__(self, rules: Sequence[Rule], start: float) -> None:
        self.rules = tuple(rules)
        self._last_fired: dict[Rule, float] = {}
        self._start = start
        self._history: list[Observation] = []
        # limits: when each (rule, offender) last fired; the offenders of the last round
        self._offender_fired: dict[tuple[Rule, str], float] = {}
        self.offenders: dict[Rule, tuple[Offender, ...]] = {}

    @property
    def needs_memory(self) -> bool:
        """Whether a rule reads the RSS breakdown (measured in the target: not free)."""
        return any(r.kind in ("native", "unexplained") for r in self.rules)

    @property
    def needs_limits(self) -> bool:
        """Whether a rule looks at each task or thread (their figures cost a pass over
        every site each interval)."""
        return any(r.is_limit for r in self.rules)

    @property
    def leak_intervals(self) -> int:
        return max((r.intervals for r in self.rules if r.kind == "leak"), default=0)

    def observe(self, obs: Observation, growing_sites: Sequence[int] = ()) -> list[Rule]:
        """Record one interval; ``growing_sites[k]`` = sites that grew k+1 intervals running."""
        self._history.append(obs)
        windowed = [r.window for r in self.rules if "growth" in r.kind or r.kind == "thread-alloc"]
        horizon = max(windowed, default=0.0)
        while len(self._history) > 2 and self._history[1].time < obs.time - horizon:
            self._history.pop(0)
        fired = []
        self.offenders = {}
        for rule in self.rules:
            if rule.is_limit:
                found = self._offending(rule, obs)
                if found:
                    self.offenders[rule] = found
                    fired.append(rule)
                continue
            if self._holds(rule, obs, growing_sites) and self._cooled(rule, obs.time):
                self._last_fired[rule] = obs.time
                fired.append(rule)
        return fired

    def _offending(self, rule: Rule, obs: Observation) -> tuple[Offender, ...]:
        """The tasks or threads beyond a limit that have not fired within the cooldown
        (task-alloc only grows: each fires once), largest first; they are marked fired."""
        candidates: Sequence[Offender]
        if rule.kind == "task-alloc":
            candidates = obs.task_alloc
        elif rule.kind == "task-live":
            candidates = obs.task_live
        else:
            candidates = self._thread_growth(rule, obs)
        found = []
        for offender in sorted(candidates, key=lambda o: (-o.value, o.name)):
            if offender.value <= rule.size:
                break
            key = (rule, offender.name)
            last = self._offender_fired.get(key)
            if last is not None and (rule.kind == "task-alloc" or obs.time - last < rule.cooldown):
                continue
            self._offender_fired[key] = obs.time
            found.append(offender)
        return tuple(found)

    def _thread_growth(self, rule: Rule, obs: Observation) -> list[Offender]:
        """What each thread allocated within the rule's window: its count now less its
        count at the window's oldest observation (0 if that one did not list it)."""
        window = [o for o in self._history if o.time >= obs.time - rule.window]
        oldest = {o.name: o.value for o in window[0].thread_alloc} if len(window) > 1 else {}
        return [replace(o, value=o.value - oldest.get(o.name, 0.0)) for o in obs.thread_alloc]

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
