"""What heapspy itself may do to other processes: the one capability that matters."""

from __future__ import annotations

CAP_SYS_PTRACE = 19


def has_cap_sys_ptrace() -> bool:
    """Whether heapspy runs with CAP_SYS_PTRACE in effect (root usually has it; a
    container's root may not): it decides who may be read and traced, and so which
    advice an error gives."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_SYS_PTRACE & 1)
    except (OSError, ValueError):
        pass
    return False
