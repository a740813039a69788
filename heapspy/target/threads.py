"""What a target's threads are doing, read from /proc without stopping them: what the main
thread is blocked in (both injectors explain a slow agent start with it, and choose how to
inject by it), and which threads are on a CPU now.


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
from dataclasses import dataclass

from heapspy.inject.arch import Arch, current_arch

FUTEX_WAIT, FUTEX_WAIT_BITSET, FUTEX_CMD_MASK = 0, 9, 0x7F  # cmd = op & ~(PRIVATE|CLOCK_RT)
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


def is_futex_wait_op(op: int) -> bool:
    """Whether a futex(2) ``op`` waits (a lock, ``join()``, ``Event.wait()``, the GIL)."""
    return op & FUTEX_CMD_MASK in (FUTEX_WAIT, FUTEX_WAIT_BITSET)


@dataclass(frozen=True)
class MainThreadActivity:
    """What a thread is doing, read from /proc without stopping it."""

    kind: str  # running, futex, sleep, io, poll, child, stopped, exited, syscall, unknown
    syscall: int | None
    description: str

    def __str__(self) -> str:
        return self.description


def describe_main_thread(pid: int) -> str:
    """What the main thread is blocked in, in words, without stopping it."""
    return main_thread_activity(pid).description


def main_thread_activity(pid: int) -> MainThreadActivity:
    """Classify the main thread from /proc/PID/{stat,syscall,wchan}; never stops it."""
    arch = current_arch()
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return MainThreadActivity("exited", None, "exited")
    if state in ("Z", "X"):
        return MainThreadActivity("exited", None, "exited")
    if state in ("T", "t"):
        return MainThreadActivity("stopped", None, "stopped (SIGSTOP, Ctrl-Z or a debugger)")
    try:
        with open(f"/proc/{pid}/syscall") as f:
            fields = f.read().split()
    except OSError:
        fields = []
    if not fields:
        return MainThreadActivity("unknown", None, "in an unknown state")
    if fields[0] == "running":
        return MainThreadActivity("running", None, "running")
    nr = int(fields[0])
    if nr < 0:
        return MainThreadActivity("running", None, "running (blocked outside a syscall)")
    args = [int(a, 16) for a in fields[1:7]]
    return _classify_syscall(arch, nr, args, _wchan(pid))


def _wchan(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/wchan") as f:
            value = f.read().strip()
    except OSError:
        return ""
    return "" if value in ("0", "") else value


_IO_CALLS = frozenset(
    "accept accept4 read readv recvfrom recvmsg recvmmsg connect msgrcv flock fcntl semop "
    "semtimedop".split()
)
_POLL_CALLS = frozenset(
    "select pselect6 poll ppoll epoll_wait epoll_pwait epoll_pwait2 io_getevents "
    "io_uring_enter".split()
)


def _classify_syscall(arch: Arch, nr: int, args: list[int], wchan: str) -> MainThreadActivity:
    name = arch.syscall_name(nr)
    if name == "futex":
        if is_futex_wait_op(args[1] if len(args) > 1 else 0):
            return MainThreadActivity(
                "futex", nr, "waiting on a futex (a lock, join(), Event.wait() or the GIL)"
            )
        return MainThreadActivity("futex", nr, "in a futex call")
    if name in ("nanosleep", "clock_nanosleep", "pause"):
        return MainThreadActivity("sleep", nr, f"sleeping in {name}")
    if name in ("select", "pselect6") and args and args[0] == 0:
        return MainThreadActivity("sleep", nr, f"sleeping in {name}")  # time.sleep before 3.11
    if name in _IO_CALLS:
        return MainThreadActivity("io", nr, f"blocked in {name}")
    if name in _POLL_CALLS:
        return MainThreadActivity("poll", nr, f"blocked in {name}")
    if name in ("wait4", "waitid"):
        return MainThreadActivity("child", nr, f"waiting for a child process ({name})")
    where = f" ({wchan})" if wchan else ""
    return MainThreadActivity("syscall", nr, f"in {name}{where}")
