"""The last-chance dump: a heap profile written just before the OOM killer strikes.

A worker killed by its cgroup's OOM killer takes its heap with it; the dump that would
have named the leak must be written before, while the session still has the samples.
So the session watches the worker's memory cgroup: slowly (every second) while it is
far from its limit, every 250 ms once it is within ``NEAR`` of it, and asks for one
dump when the working set comes within ``margin`` of the limit or when the kernel has
started reclaiming at the limit (v2 ``memory.events`` ``max``/``oom`` moved; v1
``memory.failcnt``). After the worker dies, ``oom_kills`` says whether the kernel's
OOM killer struck its cgroup meanwhile, so the final dump can say so.

The slow reading is done for every running session of the process at once, by one
thread (``_Monitor``): it reads each cgroup once a second and wakes the sessions of one
that comes near its limit or where the kernel starts reclaiming. Far from the limit a
session's loop then never wakes for its cgroup, nor reads it: the monitor's reading is
its state. A daemon with 64 idle-ish workers in one unit otherwise woke
64 loops a second to read one cgroup.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from heapspy.cgroup import MemoryCgroup, MemoryState, locate, read_state

NEAR = 0.80  # poll fast from this share of the limit on
FAST_POLL = 0.25
SLOW_POLL = 1.0
DEFAULT_MARGIN = 0.05  # last chance: within 5 % of the limit
DEFAULT_COOLDOWN = 300.0
_PRESSURE_EVENTS = ("max", "oom")


def _fmt(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


# The daemon's sessions often watch workers of one cgroup (a unit's gunicorn workers),
# each polling it every second: one reading serves every session polling within this
# long (less than FAST_POLL, so a cgroup near its limit is still read that often);
# SHARED_FAR while the reading was far from the limit (the figures are then at most
# SLOW_POLL + SHARED_FAR old, and the kernel's counters the same for every session).
SHARED_FOR = 0.2
SHARED_FAR = 0.5
# A poll far from the limit may come this much early: a session's loop wakes for its
# agent's frame (every interval) and polls then, instead of waking again for the poll.
EARLY = 0.4
_recent: dict[MemoryCgroup, tuple[float, MemoryState | None]] = {}
_recent_lock = threading.Lock()


def _moved(events: dict[str, int], seen: dict[str, int]) -> list[str]:
    """The pressure events counted since ``seen`` (the kernel reclaims at the limit)."""
    return [k for k in _PRESSURE_EVENTS if events.get(k, 0) > seen.get(k, 0)]


def _near(state: MemoryState | None) -> bool:
    used = state.used_fraction if state is not None else None
    return used is not None and used >= NEAR


def _shared_for(state: MemoryState | None) -> float:
    return SHARED_FOR if state is None or _near(state) else SHARED_FAR


def _read_shared(cg: MemoryCgroup, now: float) -> MemoryState | None:
    with _recent_lock:
        hit = _recent.get(cg)
    if hit is not None and 0 <= now - hit[0] < _shared_for(hit[1]):
        return hit[1]
    fresh = read_state(cg)
    with _recent_lock:
        if len(_recent) >= 1024:  # cgroups come and go: never more than a few kept
            _recent.clear()
        _recent[cg] = (now, fresh)
    return fresh


@dataclass
class CgroupWatch:
    """One session's view of its target's memory cgroup."""

    cgroup: MemoryCgroup
    state: MemoryState
    margin: float = DEFAULT_MARGIN
    cooldown: float = DEFAULT_COOLDOWN
    last_chance: bool = True
    _baseline: dict[str, int] | None = None
    _seen: dict[str, int] | None = None
    _next_poll: float = 0.0
    _fired_at: float | None = None
    _wake: Callable[[], None] | None = field(default=None, repr=False, compare=False)
    _alerted: bool = field(default=False, repr=False, compare=False)

    @classmethod
    def for_pid(cls, pid: int, last_chance: bool = True) -> CgroupWatch | None:
        cg = locate(pid)
        state = read_state(cg) if cg is not None else None
        if cg is None or state is None:
            return None
        return cls(
            cg,
            state,
            last_chance=last_chance,
            _baseline=dict(state.events),
            _seen=dict(state.events),
        )

    def _near(self) -> bool:
        return _near(self.state)

    @property
    def next_poll(self) -> float:
        """When (``time.monotonic``) the cgroup is read next."""
        return self._next_poll

    @property
    def due(self) -> float:
        """When a session's loop must wake for the poll if nothing woke it before: far
        from the limit, EARLY after ``next_poll`` (a poll then comes at the agent's next
        frame, see ``poll``); near it, at ``next_poll``."""
        if self._near():
            return self._next_poll
        # far, and followed: the monitor wakes the loop when the cgroup comes near
        return math.inf if self._wake is not None else self._next_poll + EARLY

    def follow(self, wake: Callable[[], None]) -> None:
        """Have the process's monitor read the cgroup while far from its limit, and call
        ``wake`` (from its thread) when a poll is needed now; ``unfollow`` undoes it."""
        self._wake = wake
        _monitor.add(self)

    def unfollow(self) -> None:
        _monitor.remove(self)
        self._wake = None

    def alert(self) -> None:
        """The monitor saw the cgroup near its limit or reclaiming: poll at the next
        wake, which this brings now."""
        self._alerted = True
        wake = self._wake
        if wake is not None:
            wake()

    def poll(self, now: float) -> str | None:
        """Read the cgroup when due (far from the limit, up to EARLY before) or alerted;
        the reason for a last-chance dump, or None."""
        alerted, self._alerted = self._alerted, False
        if not alerted and self._wake is not None and not self._near():
            return None  # followed: the monitor reads it, and alerts when it must be polled
        if not alerted and now < self._next_poll - (0.0 if self._near() else EARLY):
            return None
        fresh = _read_shared(self.cgroup, now)
        if fresh is None:
            self._next_poll = now + SLOW_POLL
            return None
        self.state = fresh
        self._next_poll = now + (FAST_POLL if self._near() else SLOW_POLL)
        seen = self._seen or {}
        moved = _moved(fresh.events, seen)
        self._seen = dict(fresh.events)
        if not self.last_chance or fresh.limit is None:
            return None
        if self._fired_at is not None and now - self._fired_at < self.cooldown:
            return None
        close = fresh.working_set >= fresh.limit * (1 - self.margin)
        if not (close or moved):
            return None
        self._fired_at = now
        why = (
            f"cgroup {self.cgroup.name} at {_fmt(fresh.working_set)} of its "
            f"{_fmt(fresh.limit)} limit ({fresh.working_set / fresh.limit:.0%})"
        )
        if moved:
            counters = ", ".join(f"{k} {seen.get(k, 0)}->{fresh.events[k]}" for k in moved)
            file = "memory.events" if self.cgroup.version == 2 else "memory.failcnt"
            why += f"; the kernel reclaims at the limit ({file}: {counters})"
        return why

    def oom_kills(self) -> int:
        """OOM kills in the cgroup since the session began (read now)."""
        fresh = read_state(self.cgroup)
        if fresh is not None:
            self.state = fresh
        base = (self._baseline or {}).get("oom_kill", 0)
        return max(0, self.state.events.get("oom_kill", 0) - base)

    def as_json(self) -> dict[str, object]:
        out = self.state.as_json()
        out.update(version=self.cgroup.version, name=self.cgroup.name)
        return out


class _Monitor:
    """The one thread that reads, once per SLOW_POLL, each cgroup that a running session
    of this process follows (module docstring). Runs while any session follows one.
    Watches are grouped by cgroup as they come and go, not at each reading: hashing a
    MemoryCgroup (its paths) for each of 64 watches every second was most of its CPU."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[MemoryCgroup, dict[int, CgroupWatch]] = {}
        self._thread: threading.Thread | None = None

    def add(self, watch: CgroupWatch) -> None:
        with self._lock:
            self._groups.setdefault(watch.cgroup, {})[id(watch)] = watch
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="heapspy:cgroups", daemon=True
                )
                self._thread.start()

    def remove(self, watch: CgroupWatch) -> None:
        with self._lock:
            group = self._groups.get(watch.cgroup)
            if group is not None:
                group.pop(id(watch), None)
                if not group:
                    del self._groups[watch.cgroup]

    def _run(self) -> None:
        seen: dict[MemoryCgroup, dict[str, int]] = {}
        while True:
            with self._lock:
                if not self._groups:
                    self._thread = None  # a later add() starts another
                    return
                groups = [(cg, list(group.values())) for cg, group in self._groups.items()]
            now = time.monotonic()
            for cg, watches in groups:
                state = _read_shared(cg, now)
                if state is None:
                    continue
                last = seen.get(cg)
                # a cgroup read for the first time alerts too: its sessions began earlier
                alert = last is None or bool(_moved(state.events, last)) or _near(state)
                seen[cg] = dict(state.events)
                for watch in watches:
                    watch.state = state  # current for its session's status
                    if alert:
                        watch.alert()
            if len(seen) > len(groups):
                seen = {cg: seen[cg] for cg, _ in groups if cg in seen}
            time.sleep(SLOW_POLL)


_monitor = _Monitor()
