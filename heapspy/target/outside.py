"""What heapspy sees of an attached target from outside it: its RSS, CPU and file
descriptors at each interval, and, when the agent's socket closes, why: the process
exited, was killed by the OOM killer, or replaced its program.

The figures of each interval are read from ``/proc/PID/statm``, ``/proc/PID/stat`` and
``/proc/PID/fd`` through descriptors opened once, at the start, and read again in place
(``pread``, a directory listed again): a
daemon reads them for every session every second, and psutil's reads (a path lookup, an
open and a parse in Python for each) were most of what an idle session cost it. Held
descriptors also keep to the process they were opened for: once it has exited they
fail (ESRCH) instead of reading a newcomer that got its pid.
"""

from __future__ import annotations

import os
import shlex
import time

import psutil

from heapspy.aggregate import ProcessFacts
from heapspy.oomwatch import CgroupWatch
from heapspy.target.process import has_exited, read_proc_once, stat_fields


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


# USS (``smaps_rollup`` walks the target's page tables: ~0.2 ms for a small worker, as
# much as everything else an interval costs a daemon's session) is read every this many
# intervals, for the sidecar's series; the file descriptors (listing /proc/PID/fd) every
# FDS_EVERY, the last count standing for those between (/metrics shows it).
USS_EVERY = 60
FDS_EVERY = 5
_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")
_MAX_READ = 4096  # statm and stat are well under 1 KiB


def _open_proc(pid: int, name: str, flags: int = 0) -> int:
    return os.open(f"/proc/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC | flags)


def _uss(pid: int) -> int | None:
    """Private bytes (``Private_Clean`` + ``Private_Dirty`` + ``Private_Hugetlb``), as
    psutil's ``memory_full_info().uss``."""
    text = read_proc_once(pid, "smaps_rollup", 16384)
    if text is None:
        return None
    kib = 0
    for line in text.splitlines():
        if line.startswith(b"Private_"):
            kib += int(line.split()[1])
    return kib * 1024


class Outside:
    """One target seen from outside, from attach (its command line then: an exec
    changes it) to the end."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cmdline = cmdline(pid)
        self._statm = self._stat = self._fds = -1
        self._count = 0
        self._fd_count: int | None = None
        self._cpu_at: tuple[float, float] | None = None  # (monotonic, CPU seconds)

    def start(self) -> None:
        """From the handshake on: the figures of each interval."""
        self.close()
        try:
            self._statm = _open_proc(self.pid, "statm")
            self._stat = _open_proc(self.pid, "stat")
            self._fds = _open_proc(self.pid, "fd", os.O_DIRECTORY)
        except OSError:
            self.close()

    def close(self) -> None:
        """No more figures (the session's end): the descriptors go."""
        for fd in (self._statm, self._stat, self._fds):
            if fd >= 0:
                os.close(fd)
        self._statm = self._stat = self._fds = -1

    def _cpu_percent(self, stat: bytes) -> float:
        """Percent of one core since the last interval, as psutil's ``cpu_percent``:
        0.0 the first time."""
        fields = stat_fields(stat)
        used = (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
        now = time.monotonic()
        last, self._cpu_at = self._cpu_at, (now, used)
        if last is None or now <= last[0]:
            return 0.0
        return (used - last[1]) / (now - last[0]) * 100

    def facts(self) -> ProcessFacts:
        if self._fds < 0:
            return ProcessFacts()
        try:
            rss = int(os.pread(self._statm, _MAX_READ, 0).split()[1]) * _PAGE
            cpu = self._cpu_percent(os.pread(self._stat, _MAX_READ, 0))
            if self._count % FDS_EVERY == 0 or self._fd_count is None:
                self._fd_count = len(os.listdir(self._fds))
        except (OSError, ValueError, IndexError):  # gone (ESRCH), or not readable
            return ProcessFacts()
        uss = _uss(self.pid) if self._count % USS_EVERY == 0 else None
        self._count += 1
        return ProcessFacts(rss, cpu, self._fd_count, uss)

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
