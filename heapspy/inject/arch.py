"""Everything about the CPU that the ptrace injector needs, in one place.

The injector (``ptrace.py``) only speaks of "the program counter", "a syscall with these
arguments", "a call to this function returning to that address"; this module maps those
onto one architecture's registers and instructions. x86_64 is implemented; aarch64 needs
another ``Arch`` subclass (``user_pt_regs`` is x0..x30 sp pc pstate, ``svc #0`` is
``01 00 00 d4``, ``brk #0`` is ``00 00 20 d4`` and leaves pc *on* the trap, the return
address goes in x30, the syscall number is changed through the NT_ARM_SYSTEM_CALL
regset, FP state is NT_PRFPREG) plus a line in ``current_arch``.
"""

from __future__ import annotations

import ctypes
import platform
import struct
from typing import ClassVar

from heapspy.errors import InjectionFailed, Remedy

NT_PRSTATUS = 1  # the general registers, as PTRACE_GETREGSET calls them on every arch

_MASK64 = (1 << 64) - 1


def signed64(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >> 63 else value


def signed32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >> 31 else value


class X86_64Regs(ctypes.Structure):
    """``struct user_regs_struct`` from <sys/user.h> (27 unsigned 64-bit words)."""

    _fields_: ClassVar[list[tuple[str, type[ctypes.c_uint64]]]] = [
        (name, ctypes.c_uint64)
        for name in (
            "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax "
            "rip cs eflags rsp ss fs_base gs_base ds es fs gs"
        ).split()
    ]


class Arch:
    """The operations the injector needs; one subclass per architecture."""

    name: ClassVar[str]
    regs_type: ClassVar[type[ctypes.Structure]]
    syscall_insn: ClassVar[bytes]  # one "enter the kernel" instruction
    trap_insn: ClassVar[bytes]  # one breakpoint instruction (raises SIGTRAP)
    fp_regset: ClassVar[int]  # the PTRACE_GETREGSET note type for FP/vector state
    fp_regset_max: ClassVar[int]  # a buffer large enough for it on any CPU
    syscall_numbers: ClassVar[dict[str, int]]

    def syscall_name(self, nr: int) -> str:
        for name, value in self.syscall_numbers.items():
            if value == nr:
                return name
        return f"syscall {nr}"

    def copy(self, regs: ctypes.Structure) -> ctypes.Structure:
        return self.regs_type.from_buffer_copy(regs)

    # --- what the registers say -------------------------------------------------------
    def pc(self, regs: ctypes.Structure) -> int:
        raise NotImplementedError

    def sp(self, regs: ctypes.Structure) -> int:
        raise NotImplementedError

    def interrupted_syscall(self, regs: ctypes.Structure) -> int | None:
        """The syscall the thread was in when it stopped, or None if in user code."""
        raise NotImplementedError

    def syscall_return(self, regs: ctypes.Structure) -> int:
        """The syscall result register, signed (``-errno`` or ``-ERESTART*`` on failure)."""
        raise NotImplementedError

    def syscall_args(self, regs: ctypes.Structure) -> tuple[int, ...]:
        raise NotImplementedError

    def call_return_int(self, regs: ctypes.Structure) -> int:
        """A C ``int`` returned by a function call."""
        raise NotImplementedError

    def pc_after_trap(self, trap_addr: int) -> int:
        """Where the program counter is after the trap instruction at ``trap_addr`` fired."""
        raise NotImplementedError

    # --- changing them ----------------------------------------------------------------
    def set_syscall_return(self, regs: ctypes.Structure, value: int) -> None:
        """Make an interrupted syscall return ``value`` instead of restarting."""
        raise NotImplementedError

    def skip_syscall(self, regs: ctypes.Structure) -> None:
        """At a syscall-entry stop: do not run it. Elsewhere: do not restart anything."""
        raise NotImplementedError

    def prepare_syscall(
        self, regs: ctypes.Structure, insn_addr: int, nr: int, args: tuple[int, ...]
    ) -> None:
        """Set ``regs`` so that resuming executes syscall ``nr`` at ``insn_addr``."""
        raise NotImplementedError

    def prepare_call(
        self, regs: ctypes.Structure, func: int, args: tuple[int, ...], return_addr: int
    ) -> list[tuple[int, bytes]]:
        """Set ``regs`` for a C call; return the (address, bytes) to write on the stack."""
        raise NotImplementedError


class X86_64(Arch):
    name = "x86_64"
    regs_type = X86_64Regs
    syscall_insn = b"\x0f\x05"
    trap_insn = b"\xcc"
    fp_regset = 0x202  # NT_X86_XSTATE: x87, SSE, AVX, AVX-512, AMX... as XSAVE lays it out
    fp_regset_max = 64 * 1024
    # Below the System V red zone (128 bytes) with room to spare: the interrupted code may
    # keep live data just under its stack pointer.
    stack_gap = 1024
    _call_args = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
    _syscall_args = ("rdi", "rsi", "rdx", "r10", "r8", "r9")
    # The calls heapspy runs or reports; the full table is in <asm/unistd_64.h>.
    syscall_numbers: ClassVar[dict[str, int]] = {
        "read": 0,
        "write": 1,
        "poll": 7,
        "mmap": 9,
        "munmap": 11,
        "rt_sigtimedwait": 128,
        "rt_sigsuspend": 130,
        "readv": 19,
        "select": 23,
        "sched_yield": 24,
        "pause": 34,
        "nanosleep": 35,
        "connect": 42,
        "accept": 43,
        "sendto": 44,
        "recvfrom": 45,
        "sendmsg": 46,
        "recvmsg": 47,
        "wait4": 61,
        "msgrcv": 70,
        "flock": 73,
        "fcntl": 72,
        "semop": 65,
        "futex": 202,
        "restart_syscall": 219,
        "semtimedop": 220,
        "clock_nanosleep": 230,
        "epoll_wait": 232,
        "waitid": 247,
        "openat": 257,
        "pselect6": 270,
        "ppoll": 271,
        "epoll_pwait": 281,
        "accept4": 288,
        "recvmmsg": 299,
        "io_getevents": 208,
        "io_uring_enter": 426,
        "epoll_pwait2": 441,
        "futex_waitv": 449,
    }

    def pc(self, regs: ctypes.Structure) -> int:
        return int(regs.rip)

    def sp(self, regs: ctypes.Structure) -> int:
        return int(regs.rsp)

    def interrupted_syscall(self, regs: ctypes.Structure) -> int | None:
        nr = signed64(regs.orig_rax)
        return None if nr < 0 else nr

    def syscall_return(self, regs: ctypes.Structure) -> int:
        return signed64(regs.rax)

    def syscall_args(self, regs: ctypes.Structure) -> tuple[int, ...]:
        return tuple(int(getattr(regs, r)) for r in self._syscall_args)

    def call_return_int(self, regs: ctypes.Structure) -> int:
        return signed32(regs.rax)

    def pc_after_trap(self, trap_addr: int) -> int:
        return trap_addr + len(self.trap_insn)  # int3 is a trap: rip points past it

    def set_syscall_return(self, regs: ctypes.Structure, value: int) -> None:
        regs.rax = value & _MASK64

    def skip_syscall(self, regs: ctypes.Structure) -> None:
        # At syscall entry, orig_rax = -1 makes the kernel skip the call (returning
        # -ENOSYS); at any other stop it stops the restart logic from rewinding rip.
        regs.orig_rax = _MASK64

    def prepare_syscall(
        self, regs: ctypes.Structure, insn_addr: int, nr: int, args: tuple[int, ...]
    ) -> None:
        if len(args) > len(self._syscall_args):
            raise ValueError("at most 6 syscall arguments")
        self.skip_syscall(regs)  # whatever the thread was in must not be restarted
        regs.rip = insn_addr
        regs.rax = nr
        for reg, value in zip(self._syscall_args, args):
            setattr(regs, reg, value & _MASK64)

    def prepare_call(
        self, regs: ctypes.Structure, func: int, args: tuple[int, ...], return_addr: int
    ) -> list[tuple[int, bytes]]:
        if len(args) > len(self._call_args):
            raise ValueError("at most 6 integer arguments")
        self.skip_syscall(regs)
        # The ABI wants rsp % 16 == 0 before `call`, so rsp % 16 == 8 at the first
        # instruction of the callee, with the return address at [rsp].
        frame = (self.sp(regs) - self.stack_gap) & ~0xF
        rsp = frame - 8
        regs.rsp = rsp
        regs.rip = func
        regs.rax = 0  # no vector args, should it be variadic
        regs.eflags &= ~0x400  # DF clear, as the ABI promises
        for reg, value in zip(self._call_args, args):
            setattr(regs, reg, value & _MASK64)
        return [(rsp, struct.pack("<Q", return_addr))]


_ARCHES: dict[str, type[Arch]] = {"x86_64": X86_64, "amd64": X86_64}


def current_arch() -> Arch:
    """The ``Arch`` of this machine (heapspy and its targets share one kernel and CPU)."""
    machine = platform.machine().lower()
    arch = _ARCHES.get(machine)
    if arch is None:
        raise InjectionFailed(
            f"heapspy's ptrace injector does not support {machine} yet (x86_64 only).",
            remedies=(Remedy("pep768"),),
        )
    return arch()
