"""Decide whether a pid is a CPython heapspy can attach to, before touching it.

Everything here only reads ``/proc``; a refusal leaves the target untouched.
"""

from __future__ import annotations

import os
import re
import select
import signal
import struct
import time
import weakref
from dataclasses import dataclass, field

from heapspy.errors import (
    HeapspyError,
    NoSuchProcess,
    NotPython,
    TargetExited,
    TracerAttached,
    UnrecognisedPython,
    UnsupportedPython,
)
from heapspy.target.elf import ElfImage
from heapspy.target.maps import Mapping, read_maps
from heapspy.target.memory import RemoteMemory

SUPPORTED = ((3, 8), (3, 14))
_LIB = re.compile(r"libpython(\d+)\.(\d+)(t?)[^/]*\.so")
_EXE = re.compile(r"python(\d+)\.(\d+)(t?)$")


@dataclass(frozen=True)
class PythonTarget:
    pid: int
    version: tuple[int, int]
    micro: int | None
    free_threaded: bool
    image_path: str  # the mapped file that holds the interpreter's symbols
    exe: str
    uid: int
    comm: str
    # Clock ticks after boot at which the process started (/proc/PID/stat field 22): with
    # the pid, an identity no later process can share. 0: not pinned (a hand-made target).
    start_time: int = 0
    # A pidfd held from inspection on (closed with this object): readable once it exits.
    pidfd: int = field(default=-1, compare=False, repr=False)

    @property
    def version_text(self) -> str:
        major, minor = self.version
        tail = f".{self.micro}" if self.micro is not None else ""
        return f"{major}.{minor}{tail}{'t' if self.free_threaded else ''}"


def _status(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise NoSuchProcess(f"No process with pid {pid}.") from None
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def read_proc_once(pid: int, name: str, limit: int) -> bytes | None:
    """``/proc/PID/NAME`` in one read of at most ``limit`` bytes (the kernel renders
    stat, statm and smaps_rollup whole on the first read); None when the process has
    gone or the file cannot be read. The daemon reads these for every worker it watches,
    so no file object and no second read."""
    try:
        fd = os.open(f"/proc/{pid}/{name}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)


def stat_fields(stat: bytes) -> list[bytes]:
    """The fields of a ``/proc/PID/stat`` after the command name, the state first (so
    field N of proc(5) is item N - 3): the name may hold spaces and ")", so they are
    counted from the last ")"."""
    return stat.rpartition(b")")[2].split()


def start_time(pid: int) -> int:
    """When ``pid`` started, in clock ticks after boot: fixed for the life of a process,
    so a pid that now names another process shows a different value."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise NoSuchProcess(f"No process with pid {pid}.") from None
    return int(stat_fields(data)[19])


def _gone_message(pid: int) -> str:
    return f"Process {pid} exited (its pid may already name another process); nothing was done."


def check_same_process(target: PythonTarget) -> None:
    """Raise ``TargetExited`` unless ``target.pid`` still names the process inspected.

    Called right before anything is written into the target (PTRACE_SEIZE, the PEP 768
    request, the agent's files): between inspection and that moment the target may have
    exited and its pid been given to another process, maybe another user's.
    """
    if not target.start_time:
        return
    gone = False
    if target.pidfd >= 0:
        poller = select.poll()
        poller.register(target.pidfd, select.POLLIN)
        gone = bool(poller.poll(0))
    if not gone:
        try:
            gone = start_time(target.pid) != target.start_time
        except NoSuchProcess:
            gone = True
    if gone:
        raise TargetExited(_gone_message(target.pid))


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def tracer_of(pid: int) -> int:
    return int(_status(pid).get("TracerPid", "0"))


def check_no_tracer(pid: int) -> None:
    tracer = tracer_of(pid)
    if tracer:
        try:
            with open(f"/proc/{tracer}/comm") as f:
                name = f.read().strip()
        except OSError:
            name = "?"
        raise TracerAttached(
            f"Process {pid} is already being traced by pid {tracer} ({name}).",
            hint="Detach that debugger or tracer (gdb, strace, py-spy) and try again.",
        )


def tracer_error(pid: int) -> TracerAttached | None:
    """The error to give when another tracer holds ``pid`` (why a ptrace was refused), or
    None when none does or it cannot be told."""
    try:
        check_no_tracer(pid)
    except TracerAttached as exc:
        return exc
    except HeapspyError:
        return None
    return None


def has_exited(pid: int) -> bool:
    """Gone, or a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def dying(pid: int, wait: float = 1.0) -> bool:
    """Whether the process died or is dying: a SIGKILL takes a moment to finish the job,
    so a pending one counts, and a process still running is watched for ``wait`` s."""
    deadline = time.monotonic() + wait
    while True:
        if has_exited(pid) or _sigkill_pending(pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


def _sigkill_pending(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("SigPnd:", "ShdPnd:")):
                    if int(line.split()[1], 16) >> (signal.SIGKILL - 1) & 1:
                        return True
    except (OSError, ValueError):
        return True
    return False


def _find_image(maps: list[Mapping]) -> tuple[str, int, int, bool] | None:
    lib = None
    exe = None
    for m in maps:
        base = os.path.basename(m.path.replace(" (deleted)", ""))
        match = _LIB.search(base)
        if match and lib is None:
            lib = (m.path, int(match[1]), int(match[2]), bool(match[3]))
        match = _EXE.search(base)
        if match and exe is None and m.executable:
            exe = (m.path, int(match[1]), int(match[2]), bool(match[3]))
    return lib or exe


def _micro_version(pid: int, maps: list[Mapping], path: str, named: tuple[int, int]) -> int | None:
    """Read ``Py_Version`` (3.11+) from memory; it must agree with the file's name."""
    try:
        addr = ElfImage(pid, maps, path).symbol("Py_Version")
        if addr is None:
            return None
        hexversion = struct.unpack("<I", RemoteMemory(pid).read(addr, 4))[0]
    except OSError:
        return None
    actual = (hexversion >> 24, (hexversion >> 16) & 0xFF)
    if actual != named:
        raise UnrecognisedPython(
            f"Process {pid}: {path} says it is Python {actual[0]}.{actual[1]}, its name says "
            f"{named[0]}.{named[1]}; heapspy will not guess its layout."
        )
    return int((hexversion >> 8) & 0xFF)


def inspect_target(pid: int, expect_start: int | None = None) -> PythonTarget:
    """Identify the interpreter in ``pid`` or raise the error that explains why not.

    ``expect_start``: the start time the caller saw (the daemon's scan); a process with
    that pid but another start time is a newcomer, refused as if the target had exited.
    The target returned holds a pidfd and the start time for ``check_same_process``.
    """
    if pid <= 0:
        raise NoSuchProcess(f"{pid} is not a valid pid.")
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise NoSuchProcess(f"No process with pid {pid}.") from None
    try:
        started = start_time(pid)
        if expect_start is not None and started != expect_start:
            raise TargetExited(_gone_message(pid))
        found = _inspect(pid)
    except BaseException:
        os.close(pidfd)
        raise
    target = PythonTarget(*found, start_time=started, pidfd=pidfd)
    weakref.finalize(target, _close_quietly, pidfd)
    return target


def _inspect(
    pid: int,
) -> tuple[int, tuple[int, int], int | None, bool, str, str, int, str]:
    status = _status(pid)
    if status.get("State", "").startswith(("Z", "X")):
        raise TargetExited(f"Process {pid} has exited (it is a zombie).")
    comm = status.get("Name", "?")
    uid = int(status.get("Uid", "0").split()[1])
    maps = read_maps(pid)
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = "?"
    found = _find_image(maps)
    if found is None:
        raise NotPython(
            f"Process {pid} ({comm}) is not a CPython process: no libpython or python "
            "executable is mapped in it."
        )
    path, major, minor, free_threaded = found
    if (major, minor) < SUPPORTED[0]:
        raise UnsupportedPython(
            f"Process {pid} runs Python {major}.{minor}; heapspy supports CPython 3.8 to 3.14."
        )
    if (major, minor) > SUPPORTED[1]:
        raise UnrecognisedPython(
            f"Process {pid} runs Python {major}.{minor}, newer than this heapspy knows "
            "(3.8 to 3.14).",
            hint="Upgrade heapspy.",
        )
    micro = _micro_version(pid, maps, path, (major, minor))
    return pid, (major, minor), micro, free_threaded, path, exe, uid, comm
