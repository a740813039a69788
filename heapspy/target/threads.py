"""Which of a target's threads are on a CPU now, read from /proc without stopping them.

A PEP 768 request is served at the chosen thread's next eval-breaker check: a thread that
is running Python gets there within milliseconds, one blocked in a syscall or on a lock
only when that call returns (a main thread in ``Thread.join()`` never). Choosing a thread
for the request therefore needs to know which ones are running, and a single look at the
scheduler state misses a thread that runs in short bursts on a loaded machine: so we
watch a short window and count both the times a thread was seen runnable and the CPU
ticks it used.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

WINDOW = 0.1  # seconds watched: long enough to see a worker that runs in bursts
STEP = 0.01


def _stat(pid: int, tid: int) -> tuple[str, int] | None:
    """(scheduler state letter, user + system CPU ticks) of one thread, None if gone."""
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return fields[0], int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def thread_ids(pid: int) -> list[int]:
    """The native TIDs of a process's threads (Python's or not); [] if it is gone."""
    try:
        return sorted(int(name) for name in os.listdir(f"/proc/{pid}/task"))
    except (OSError, ValueError):
        return []


def busy_threads(
    pid: int, tids: Iterable[int], window: float = WINDOW, step: float = STEP
) -> list[int]:
    """Those of ``tids`` that ran during ``window`` seconds, busiest first.

    A thread counts once per look at which it was runnable (R) and once per CPU tick it
    used; threads that never ran are left out.
    """
    wanted = list(tids)
    if not wanted:
        return []  # nothing to watch: do not spend the window
    first = {tid: _stat(pid, tid) for tid in wanted}
    score = dict.fromkeys(wanted, 0)
    deadline = time.monotonic() + window
    while True:
        for tid in wanted:
            now = _stat(pid, tid)
            if now is not None and now[0] == "R":
                score[tid] += 1
        if time.monotonic() >= deadline:
            break
        time.sleep(step)
    for tid, before in first.items():
        after = _stat(pid, tid)
        if before is not None and after is not None:
            score[tid] += max(0, after[1] - before[1])
    busy = [tid for tid in wanted if score[tid] > 0]
    return sorted(busy, key=lambda tid: -score[tid])
