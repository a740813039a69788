"""One scan of ``/proc``: the processes each watch wants, keyed by (pid, start time).

A pid alone is not an identity: once a worker exits its pid can be given to a new
process. The start time (``create_time``, fixed for a process's life) makes the key
unique, so a remembered verdict ("not Python", "retry at ...") never sticks to a newcomer.

Never returned: pid 1, this process and its descendants (its own session
processes among them), and any process that runs heapspy.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

from heapspy.daemon.config import Watch
from heapspy.daemon.match import ProcessFacts, is_heapspy, matches

Key = tuple[int, float]  # (pid, create_time)


@dataclass(frozen=True)
class Found:
    pid: int
    create_time: float
    watch: str  # the first watch, in file order, that wants it
    cmdline: str
    uid: int

    @property
    def key(self) -> Key:
        return (self.pid, self.create_time)

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.create_time


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


def scan(watches: Sequence[Watch]) -> dict[Key, Found]:
    """Every running process that some watch wants, whatever its age."""
    me = os.getpid()
    found: dict[Key, Found] = {}
    parents: dict[int, int] = {}
    for proc in psutil.process_iter():
        if proc.pid in (0, 1, me):
            continue
        facts = ProcessFacts(proc)
        try:
            argv = facts.argv
            if not argv or is_heapspy(argv):  # kernel threads have no command line
                continue
            watch = next((w for w in watches if matches(w.selectors, facts)), None)
            if watch is None or _descends_from(proc, me, parents):
                continue
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            found[(proc.pid, proc.create_time())] = Found(
                proc.pid, proc.create_time(), watch.name, facts.cmdline, facts.uid
            )
        except psutil.Error:  # gone, a zombie, or not ours to read
            continue
    return found
