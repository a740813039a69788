"""One scan of ``/proc``: the processes each watch wants, keyed by (pid, start time).

A pid alone is not an identity: once a worker exits its pid can be given to a new
process. The start time (``create_time``, fixed for a process's life) makes the key
unique, so a remembered verdict ("not Python", "retry at ...") never sticks to a newcomer.

Never returned: pid 1, this process and its descendants (its own session
processes among them), and any process that runs heapspy.

The daemon scans every few seconds (``Scanner``) and looks again only at what may have
changed: a pid it has not seen, or a process less than ``YOUNG`` seconds old (a forked
worker renames itself after the fork: setproctitle); every other one is looked at in
full every ``RECHECK`` scans (one that starts to match later, by renaming itself or
changing its user, is found within that many; one that stops matching is let go), and
between those a process it found is only checked to be the same one (its start time)
and not a zombie; one a running session holds is not read at all (``Scanner.scan``'s
``held``). A kernel thread (never wanted: it has no command line) is never looked at in
full, only its /proc/PID/stat read: a host has dozens to hundreds of them, and their
full looks were most of an idle daemon's scans. A full look costs psutil's reads of several /proc
files per process, which on a host of a thousand processes was most of an idle
daemon's CPU.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence, Set
from dataclasses import dataclass

import psutil

from heapspy.daemon.config import Watch
from heapspy.daemon.match import ProcessFacts, is_heapspy, matches
from heapspy.target.process import read_proc_once, stat_fields

Key = tuple[int, float]  # (pid, create_time)


@dataclass(frozen=True)
class Found:
    pid: int
    create_time: float
    watch: str  # the first watch, in file order, that wants it
    cmdline: str
    uid: int
    born: float  # when it started, in seconds on the boot clock (since_boot)

    @property
    def key(self) -> Key:
        return (self.pid, self.create_time)

    def age(self, now: float | None = None) -> float:
        """Seconds since it started; ``now``: since_boot(). Not from create_time: that
        adds the kernel's boot time, a whole second, so an age from it can be nearly a
        second off (more after the wall clock is stepped), more than the daemon's
        settle."""
        return (since_boot() if now is None else now) - self.born


def _descends_from(proc: psutil.Process, ancestor: int, parents: dict[int, int]) -> bool:
    """``parents``: the parent of each pid looked up so far in this scan (workers share
    their ancestors: each is read once per scan)."""
    try:
        pid = proc.ppid()
        for _ in range(64):
            if pid == ancestor:
                return True
            if pid <= 1:
                return False
            if pid not in parents:
                parents[pid] = psutil.Process(pid).ppid()
            pid = parents[pid]
    except psutil.Error:
        return False
    return False


def alive(key: Key) -> bool:
    """Whether the process with this key still runs (not exited, not a zombie)."""
    try:
        proc = psutil.Process(key[0])
        return proc.create_time() == key[1] and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _look(
    proc: psutil.Process,
    watches: Sequence[Watch],
    me: int,
    parents: dict[int, int],
    born: float,
) -> Found | None:
    """The watch that wants ``proc``, as found now; None when none does. Raises
    psutil.Error when it is gone, a zombie, or not ours to read."""
    facts = ProcessFacts(proc)
    argv = facts.argv
    if not argv or is_heapspy(argv):  # kernel threads have no command line
        return None
    watch = next((w for w in watches if matches(w.selectors, facts)), None)
    if watch is None or _descends_from(proc, me, parents):
        return None
    if proc.status() == psutil.STATUS_ZOMBIE:
        return None
    return Found(proc.pid, proc.create_time(), watch.name, facts.cmdline, facts.uid, born)


def scan(watches: Sequence[Watch]) -> dict[Key, Found]:
    """Every running process that some watch wants, whatever its age (a full look at
    each: ``heapspy daemon --check``)."""
    return Scanner().scan(watches)


# A process started less than this long ago is looked at in full at every scan.
YOUNG = 30.0
# Any other that no watch wanted is looked at again every this many scans.
RECHECK = 5


PF_KTHREAD = 0x00200000  # /proc/PID/stat flags: a kernel thread (linux/sched.h)


@dataclass(frozen=True)
class _Stat:
    start: bytes  # clock ticks since boot, as text
    state: bytes  # the state letter
    kernel: bool  # a kernel thread


def _start_and_state(pid: int) -> _Stat | None:
    """What a scan needs of ``pid``'s /proc/PID/stat, from one read; None when it is
    gone."""
    stat = read_proc_once(pid, "stat", 4096)
    if stat is None:
        return None
    fields = stat_fields(stat)
    if len(fields) <= 19:
        return None
    try:
        kernel = bool(int(fields[6]) & PF_KTHREAD)
    except ValueError:
        kernel = False
    return _Stat(fields[19], fields[0], kernel)


@dataclass
class _Seen:
    born: float  # when it started, in seconds since boot (else when first seen: see _born)
    start: bytes | None  # its start time (/proc/PID/stat), for a process found
    found: Found | None


_TICKS = os.sysconf("SC_CLK_TCK")


def since_boot() -> float:
    """Now on the clock /proc/PID/stat's start times count from (boot, suspend included)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _born(ticks: bytes | None, now: float) -> float:
    """When a process started, from its start time in clock ticks since boot: its age,
    not how long this daemon has known it, decides whether it is young (a daemon that
    starts on a host of long-running processes looked at every one in full at every scan
    for its first YOUNG seconds). ``now`` when the start time is unknown."""
    try:
        return int(ticks) / _TICKS if ticks is not None else now
    except ValueError:
        return now


class Scanner:
    """Scans again and again, remembering what each process was (module docstring)."""

    def __init__(self, young: float = YOUNG, recheck: int = RECHECK) -> None:
        self.young, self.recheck = young, recheck
        self._seen: dict[int, _Seen] = {}
        self._round = 0

    def forget(self) -> None:
        """Look at every process in full at the next scan (the watches changed)."""
        self._seen = {}

    def scan(self, watches: Sequence[Watch], held: Set[Key] = frozenset()) -> dict[Key, Found]:
        """``held``: processes a running session holds. Each is returned as last found,
        without reading /proc: its session sees it end (the socket closes) and the
        daemon does not look at a held process's verdict. Once let go, it is looked at
        again. On a host of 64 watched workers this was most of a scan's CPU."""
        me = os.getpid()
        now = since_boot()
        self._round += 1
        found: dict[Key, Found] = {}
        parents: dict[int, int] = {}
        seen: dict[int, _Seen] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in (0, 1, me):
                continue
            pid = int(name)
            last = self._seen.get(pid)
            if last is not None and last.found is not None and last.found.key in held:
                seen[pid] = last
                found[last.found.key] = last.found
                continue
            start: _Stat | None = None
            # each known process is looked at in full in its round, one in `recheck`
            if (
                last is not None
                and now - last.born >= self.young
                and (pid + self._round) % self.recheck
            ):
                if last.found is None:
                    seen[pid] = last  # wanted by none
                    continue
                start = _start_and_state(pid)
                if start is None:
                    continue  # gone
                if start.start == last.start and start.state != b"Z":
                    seen[pid] = last
                    found[last.found.key] = last.found
                    continue
            if start is None:  # not read above: a full look reads it now
                start = _start_and_state(pid)
            if start is not None and start.kernel:  # never wanted: no full look
                seen[pid] = _Seen(_born(start.start, now), start.start, None)
                continue
            ticks = start.start if start is not None else None
            same = last is not None and ticks is not None and last.start == ticks
            born = last.born if last is not None and same else _born(ticks, now)
            try:
                got = _look(psutil.Process(pid), watches, me, parents, born)
            except psutil.Error:  # gone, a zombie, or not ours to read
                continue
            seen[pid] = _Seen(born, ticks, got)
            if got is not None:
                found[got.key] = got
        self._seen = seen
        return found
