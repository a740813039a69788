"""Which of a target's threads run: read from /proc, the target never stopped."""

from __future__ import annotations

import os
from typing import Callable

from support import Target, wait_for

from heapspy.target.threads import busy_threads, main_thread_activity, thread_ids

Spawn = Callable[..., Target]


def test_spinning_workers_are_busy_and_the_joining_main_thread_is_not(spawn: Spawn) -> None:
    target = spawn(None, "probe_target.py", "join-workers")
    workers = {int(tid) for tid in target.ready[2:]}
    assert wait_for(lambda: main_thread_activity(target.pid).kind == "futex", 30)
    tids = thread_ids(target.pid)
    assert workers <= set(tids) and target.pid in tids
    # the workers take turns with the GIL: a loaded machine may show only one of them;
    # main is in join(), never on a CPU once there (a window that began as it got there
    # showed it once in CI): some window shows workers only
    seen: list[list[int]] = []

    def workers_only() -> bool:
        seen.append(busy_threads(target.pid, tids))
        return bool(seen[-1]) and set(seen[-1]) <= workers

    assert wait_for(workers_only, 30), (seen[-3:], workers)


def test_sleeping_threads_are_not_busy(spawn: Spawn) -> None:
    target = spawn(None, "probe_target.py", "join-idle")
    assert wait_for(lambda: main_thread_activity(target.pid).kind == "futex", 30)
    tids = thread_ids(target.pid)
    assert len(tids) == 2
    # a thread may still be finishing its start in the first window on a loaded machine
    # (one CPU tick once showed in CI); once both sleep, no window may show either
    assert wait_for(lambda: busy_threads(target.pid, tids) == [], 30)


def test_gone_threads_and_processes() -> None:
    assert thread_ids(2**22 + 1) == []  # above pid_max's largest value
    assert busy_threads(os.getpid(), [2**22 + 1]) == []
