"""Parse ``/proc/PID/maps``: where each file is mapped, to find libpython and libc."""

from __future__ import annotations

import errno
from dataclasses import dataclass

from heapspy.errors import NoSuchProcess, PermissionDenied
from heapspy.target.privilege import has_cap_sys_ptrace


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str

    @property
    def executable(self) -> bool:
        return "x" in self.perms


def read_maps(pid: int) -> list[Mapping]:
    try:
        with open(f"/proc/{pid}/maps") as f:
            text = f.read()
    except FileNotFoundError:
        raise NoSuchProcess(f"No process with pid {pid}.") from None
    except PermissionError:
        if has_cap_sys_ptrace():
            hint = (
                "heapspy already has CAP_SYS_PTRACE, so the kernel or a security module "
                "refused (AppArmor, SELinux, seccomp, or a process of another container); "
                "check the audit log."
            )
        else:
            hint = "Run heapspy as the target's user, or as root with CAP_SYS_PTRACE."
        raise PermissionDenied(
            f"Not allowed to read the memory map of pid {pid}.", hint=hint
        ) from None
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            raise NoSuchProcess(f"Process {pid} exited.") from None
        raise
    result = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 5:
            continue
        lo, hi = parts[0].split("-")
        path = parts[5] if len(parts) == 6 else ""
        result.append(
            Mapping(
                start=int(lo, 16),
                end=int(hi, 16),
                perms=parts[1],
                offset=int(parts[2], 16),
                inode=int(parts[4]),
                path=path,
            )
        )
    return result


def file_mappings(maps: list[Mapping], path: str) -> list[Mapping]:
    return [m for m in maps if m.path == path]


def base_address(maps: list[Mapping], path: str) -> int:
    """Start of the offset-0 mapping of ``path``: the load address of its ELF header."""
    for m in maps:
        if m.path == path and m.offset == 0:
            return m.start
    raise LookupError(path)
