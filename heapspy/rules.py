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

Threshold rules fire when the condition becomes true and then at most once per cooldown
(default 5m) while it stays true; ``every`` has no cooldown, its period is its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from heapspy.errors import UsageError
from heapspy.units import parse_duration, parse_size

GRAMMAR = (
    "Rules: rss>SIZE, heap>SIZE, growth>SIZE/DURATION, heap-growth>SIZE/DURATION, "
    "every DURATION, leak[:K], cgroup>PCT%, psi>PCT%, psi-full>PCT%, native>SIZE, "
    "unexplained>SIZE; each may end with "
    ",cooldown=DURATION (e.g. 'rss>1.5GiB', 'growth>100MiB/10m,cooldown=30m', 'every 15m', "
    "'leak:5', 'cgroup>90%', 'psi>20%')."
)
DEFAULT_COOLDOWN = 300.0

_THRESHOLD = re.compile(r"^(rss|heap|native|unexplained)\s*>\s*(\S+)$")
_GROWTH = re.compile(r"^(growth|heap-growth)\s*>\s*([^/\s]+)\s*/\s*(\S+)$")
_EVERY = re.compile(r"^every\s+(\S+)$")
_LEAK = re.compile(r"^leak(?::(\d+))?$")
_PERCENT = re.compile(r"^(cgroup|psi|psi-full)\s*>\s*([0-9]+(?:\.[0-9]+)?)\s*%?$")


@dataclass(frozen=True)
class Rule:
    text: str
    # rss | heap | growth | heap-growth | every | leak | cgroup | psi | psi-full | native
    # | unexplained
    kind: str
    size: int = 0
    window: float = 0.0  # growth window, or the period of `every`
    intervals: int = 0  # leak: K
    percent: float = 0.0  # cgroup, psi, psi-full: the threshold in percent
    cooldown: float = DEFAULT_COOLDOWN

    @property
    def name(self) -> str:
        """Short form used in dump file names."""
        return self.text.split(",")[0].replace(" ", "")


def _bad(text: str, why: str) -> UsageError:
    return UsageError(f"Invalid dump rule {text!r}: {why}.", hint=GRAMMAR)


def parse_rule(text: str) -> Rule:
    body, _, tail = text.strip().partition(",")
    body = body.strip()
    cooldown = DEFAULT_COOLDOWN
    if tail:
        key, _, value = tail.partition("=")
        if key.strip() != "cooldown" or not value:
            raise _bad(text, f"unknown option {tail.strip()!r} (only cooldown=DURATION)")
        try:
            cooldown = parse_duration(value.strip(), "cooldown")
        except UsageError as exc:
            raise _bad(text, exc.message.rstrip(".")) from None
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
        if rule.kind in ("growth", "heap-growth"):
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
        def value(o: Observation) -> int | None:
            return o.rss if rule.kind == "growth" else o.heap

        now = value(obs)
        if now is None:
            return False
        window = [o for o in self._history if o.time >= obs.time - rule.window]
        lows = [v for v in (value(o) for o in window) if v is not None]
        return bool(lows) and now - min(lows) > rule.size
