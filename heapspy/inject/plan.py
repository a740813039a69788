"""What the ptrace injector runs in a target, and where: found before the target is touched.

A ``Plan`` names the addresses the injection needs (an existing syscall instruction to
borrow, ``Py_AddPendingCall`` and ``PyRun_SimpleString``), read from the target's maps,
ELF image and memory without stopping it; the page the injector maps is laid out here
too (landing pad first, then the NUL-terminated source). Everything that can refuse an
injection for what the target *is* refuses here, before any ptrace request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from heapspy.errors import InjectionFailed, PermissionDenied, TargetExited, UnrecognisedPython
from heapspy.inject.arch import Arch, current_arch
from heapspy.target.elf import ElfImage
from heapspy.target.maps import Mapping, read_maps
from heapspy.target.memory import RemoteMemory
from heapspy.target.privilege import ptrace_refused
from heapspy.target.process import PythonTarget, tracer_error

PAGE = 4096
SOURCE_OFFSET = 16  # the landing pad (one trap instruction, padded) comes first
WIDEST_ADDRESS = 0x7FFF_FFFF_F000  # for sizing a source that embeds its page address
_SLACK = 64  # room for a rendering that comes out a little longer than the sample


@dataclass(frozen=True)
class Plan:
    pid: int
    arch: Arch
    syscall_insn: int  # address of an existing syscall instruction in the target
    add_pending_call: int
    run_simple_string: int


def plan_pending_call(target: PythonTarget) -> Plan:
    """Where ``Py_AddPendingCall``, ``PyRun_SimpleString`` and a syscall instruction are."""
    pid = target.pid
    arch = current_arch()
    try:
        maps = read_maps(pid)
        image = ElfImage(pid, maps, target.image_path)
        memory = RemoteMemory(pid)
        add = image.symbol("Py_AddPendingCall")
        run = image.symbol("PyRun_SimpleString")
        if add is None or run is None:
            pairs = (("Py_AddPendingCall", add), ("PyRun_SimpleString", run))
            missing = " or ".join(name for name, addr in pairs if addr is None)
            raise UnrecognisedPython(
                f"{target.image_path} in process {pid} does not export {missing} "
                "(neither in .dynsym nor in .symtab).",
                hint="heapspy needs an unstripped CPython or one whose .dynsym lists the C API.",
            )
        image.check_build_id(memory)
        insn = find_syscall_insn(arch, maps, memory, target.image_path)
    except (PermissionDenied, PermissionError):
        tracer = tracer_error(pid)
        raise tracer or ptrace_refused(pid, "read the memory of") from None
    except StopIteration:  # ElfImage: the image is no longer mapped
        raise TargetExited(f"Process {pid} exited or unmapped {target.image_path}.") from None
    return Plan(pid, arch, insn, add, run)


def plan_syscall_only(pid: int) -> Plan:
    """Enough to run syscalls in ``pid`` (no function calls)."""
    arch = current_arch()
    try:
        maps = read_maps(pid)
        insn = find_syscall_insn(arch, maps, RemoteMemory(pid), None)
    except (PermissionDenied, PermissionError):
        raise ptrace_refused(pid, "read the memory of") from None
    return Plan(pid, arch, insn, 0, 0)


def find_syscall_insn(
    arch: Arch, maps: list[Mapping], memory: RemoteMemory, image: str | None
) -> int:
    """An existing syscall instruction in executable file-backed text, libc's first."""

    def rank(m: Mapping) -> int:
        base = os.path.basename(m.path)
        if base.startswith(("libc.so", "libc-")):
            return 0
        return 1 if m.path == image else 2

    candidates = sorted(
        (m for m in maps if m.executable and m.path.startswith("/") and m.inode), key=rank
    )
    chunk = 64 * 1024
    for m in candidates:
        for start in range(m.start, m.end, chunk):
            try:
                data = memory.read(start, min(chunk, m.end - start))
            except OSError:
                break
            at = data.find(arch.syscall_insn)
            while at >= 0 and (start + at) % len(arch.syscall_insn) and len(arch.syscall_insn) > 2:
                at = data.find(arch.syscall_insn, at + 1)  # aligned ISAs: aarch64's svc
            if at >= 0:
                return start + at
    raise InjectionFailed(
        f"No syscall instruction found in the executable mappings of process {memory.pid}."
    )


def check_source(text: bytes) -> None:
    if not isinstance(text, bytes):
        raise TypeError(f"the source must be bytes, not {type(text).__name__}")
    if b"\0" in text:
        raise ValueError("the source must not contain NUL bytes")


def page_size_for(sample: bytes) -> int:
    """Bytes to map for a source like ``sample`` (rendered for the widest address)."""
    return -(-(SOURCE_OFFSET + len(sample) + 1 + _SLACK) // PAGE) * PAGE


def landing_pad(arch: Arch) -> bytes:
    """What goes before the source: trap instructions the injected call returns onto."""
    return arch.trap_insn * (SOURCE_OFFSET // len(arch.trap_insn))
