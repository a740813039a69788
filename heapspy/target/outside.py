"""What heapspy sees of an attached target from outside it (psutil): its RSS, CPU and
file descriptors at each interval, and, when the agent's socket closes, why: the
process exited, was killed by the OOM killer, or replaced its program."""

from __future__ import annotations

import shlex
import time

import psutil

from heapspy.aggregate import ProcessFacts
from heapspy.oomwatch import CgroupWatch
from heapspy.target.process import has_exited


def cmdline(pid: int) -> list[str] | None:
    try:
        return list(psutil.Process(pid).cmdline())
    except psutil.Error:
        return None


def exits_soon(pid: int, within: float = 1.0) -> bool:
    """Whether the target is exiting: a socket reset by an exiting process comes before
    the process shows as a zombie."""
    deadline = time.monotonic() + within
    while not has_exited(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


class Outside:
    """One target seen from outside, from attach (its command line then: an exec
    changes it) to the end."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cmdline = cmdline(pid)
        self._proc: psutil.Process | None = None
        self._count = 0

    def start(self) -> None:
        """From the handshake on: the figures of each interval."""
        try:
            self._proc = psutil.Process(self.pid)
        except psutil.Error:
            self._proc = None

    def facts(self) -> ProcessFacts:
        proc = self._proc
        if proc is None:
            return ProcessFacts()
        try:
            with proc.oneshot():
                rss = int(proc.memory_info().rss)
                cpu = float(proc.cpu_percent(interval=None))
                fds = int(proc.num_fds())
            uss = None
            self._count += 1
            if self._count % 10 == 1:  # smaps_rollup walks page tables: not every time
                uss = int(proc.memory_full_info().uss)
            return ProcessFacts(rss, cpu, fds, uss)
        except psutil.Error:
            return ProcessFacts()

    def why_gone(self, memcg: CgroupWatch | None) -> str:
        """Why the agent's end closed, as the session's end reason."""
        # a dying process closes its sockets (and empties its cmdline) a moment before it
        # shows as a zombie: give it that moment before calling it an exec
        if exits_soon(self.pid, within=0.5):
            kills = memcg.oom_kills() if memcg is not None else 0
            if kills:
                assert memcg is not None
                return (
                    f"target exited: killed by the kernel's OOM killer (cgroup "
                    f"{memcg.cgroup.name}: {kills} OOM kill(s) while attached)"
                )
            return "target exited"
        # exec() closes the agent's socket (close-on-exec) after switching the program,
        # so by the time the end of the stream arrives the new program shows
        argv = cmdline(self.pid)
        if argv and self.cmdline is not None and argv != self.cmdline:
            return f"the process replaced its program: exec {shlex.join(argv)[:120]}"
        return "agent closed the connection"
