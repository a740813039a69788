"""The ptrace(2)/waitpid(2) layer under the ptrace injector: constants, libc bindings, one
function per request, and the decoding of a wait status.

Nothing here keeps state or decides anything; ``ptrace.py`` sequences these calls and
``plan.py`` decides what to run. Kept apart so that the injector reads as its steps and
every number taken from a kernel header is written down once.
"""

from __future__ import annotations

import ctypes
import os
import signal
from dataclasses import dataclass

from heapspy.inject.arch import NT_PRSTATUS, Arch
from heapspy.target.memory import IOVec

# <sys/ptrace.h>, <linux/ptrace.h>
PTRACE_CONT = 7
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_GETSIGINFO = 0x4202
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
PTRACE_O_TRACESYSGOOD = 1
PTRACE_EVENT_STOP = 128
WALL = 0x40000000  # __WALL: threads are not "children" for plain waitpid

PROT_READ, PROT_EXEC = 1, 4
MAP_PRIVATE, MAP_ANONYMOUS = 0x02, 0x20

ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK = 512, 513, 514, 516
RESTARTS = (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK)

STOP_SIGNALS = (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
SI_TKILL = -6  # si_code of a signal sent by tkill/tgkill

_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_tgkill = getattr(_libc, "tgkill", None)
if _tgkill is not None:
    _tgkill.restype = ctypes.c_int
    _tgkill.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]


class PtraceError(OSError):
    """A ptrace request the kernel refused (``errno`` says why)."""


class Exited(Exception):
    """The tracee exited or was killed while traced."""


@dataclass(frozen=True)
class Stop:
    """One waitpid status of a stopped tracee, decoded."""

    status: int

    @property
    def sig(self) -> int:
        return (self.status >> 8) & 0xFF

    @property
    def event(self) -> int:
        return self.status >> 16

    @property
    def is_syscall(self) -> bool:
        return self.event == 0 and self.sig == (signal.SIGTRAP | 0x80)

    @property
    def is_interrupt(self) -> bool:
        return self.event == PTRACE_EVENT_STOP and self.sig not in STOP_SIGNALS

    @property
    def is_group_stop(self) -> bool:
        return self.event == PTRACE_EVENT_STOP and self.sig in STOP_SIGNALS

    @property
    def is_signal(self) -> bool:
        return self.event == 0 and not self.is_syscall


def ptrace(request: int, pid: int, addr: int | None = 0, data: int | None = 0) -> int:
    """One ptrace request; raises ``PtraceError`` when the kernel refuses it."""
    ctypes.set_errno(0)
    result = int(_ptrace(request, pid, addr, data))
    if result == -1:
        err = ctypes.get_errno()
        if err:
            raise PtraceError(err, f"ptrace({request:#x}) on {pid}: {os.strerror(err)}")
    return result


def tgkill(pid: int, tid: int, sig: int) -> bool:
    """Send ``sig`` to one thread; whether it was sent (False without libc's tgkill)."""
    return _tgkill is not None and _tgkill(pid, tid, sig) == 0


def resend(pid: int, sig: int, to_thread: bool) -> None:
    """Send again a signal held back while the thread was ours (its siginfo is lost)."""
    try:
        if to_thread and _tgkill is not None:
            _tgkill(pid, pid, sig)
        else:
            os.kill(pid, sig)
    except OSError:
        pass  # it exited: nobody is left to miss the signal


def siginfo(pid: int) -> tuple[int, int]:
    """si_code and, for kill/tkill, the sender's pid of the signal being delivered."""
    info = ctypes.create_string_buffer(128)
    ptrace(PTRACE_GETSIGINFO, pid, 0, ctypes.addressof(info))
    code = int.from_bytes(info.raw[8:12], "little", signed=True)
    return code, int.from_bytes(info.raw[16:20], "little", signed=True)


def get_regs(pid: int, arch: Arch) -> ctypes.Structure:
    regs = arch.regs_type()
    iov = IOVec(ctypes.addressof(regs), ctypes.sizeof(regs))
    ptrace(PTRACE_GETREGSET, pid, NT_PRSTATUS, ctypes.addressof(iov))
    return regs


def set_regs(pid: int, regs: ctypes.Structure) -> None:
    iov = IOVec(ctypes.addressof(regs), ctypes.sizeof(regs))
    ptrace(PTRACE_SETREGSET, pid, NT_PRSTATUS, ctypes.addressof(iov))


def get_fp(pid: int, arch: Arch) -> bytes:
    """The FP/vector state, as long as this CPU's layout makes it."""
    buf = ctypes.create_string_buffer(arch.fp_regset_max)
    iov = IOVec(ctypes.addressof(buf), len(buf))
    ptrace(PTRACE_GETREGSET, pid, arch.fp_regset, ctypes.addressof(iov))
    return buf.raw[: iov.iov_len]


def set_fp(pid: int, arch: Arch, data: bytes) -> None:
    buf = ctypes.create_string_buffer(data, len(data))
    iov = IOVec(ctypes.addressof(buf), len(data))
    ptrace(PTRACE_SETREGSET, pid, arch.fp_regset, ctypes.addressof(iov))


def get_sigmask(pid: int) -> int:
    mask = ctypes.c_uint64()
    ptrace(PTRACE_GETSIGMASK, pid, 8, ctypes.addressof(mask))
    return int(mask.value)


def set_sigmask(pid: int, value: int) -> None:
    mask = ctypes.c_uint64(value)
    ptrace(PTRACE_SETSIGMASK, pid, 8, ctypes.addressof(mask))
