"""What heapspy itself may do to other processes: the one capability that matters, and
why the kernel refused when it did not."""

from __future__ import annotations

import os

from heapspy.errors import PermissionDenied

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


def uids(pid: int) -> tuple[int, int] | None:
    """The real and effective uid of ``pid`` (None when it is gone or unreadable): the
    real uid says whose worker it is (who may see its dumps), the effective one who may
    trace it."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    fields = line.split()
                    return int(fields[1]), int(fields[2])
    except (OSError, ValueError, IndexError):
        return None
    return None


def ptrace_refused(pid: int, what: str) -> PermissionDenied:
    """Why ptrace (or reading memory) is refused, with the fix, as precisely as /proc tells."""
    target_uid: int | None = None
    owner: int | None = None
    ids = uids(pid)
    if ids is not None:
        target_uid = ids[1]  # effective uid
    try:
        owner = os.stat(f"/proc/{pid}/status").st_uid  # root's when not dumpable
    except OSError:
        pass
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope = int(f.read().strip())
    except (OSError, ValueError):
        scope = 0
    euid = os.geteuid()
    has_cap = has_cap_sys_ptrace()
    grant = "grant heapspy CAP_SYS_PTRACE (sudo; in a container --cap-add SYS_PTRACE)"
    if scope >= 3:
        why = "Yama ptrace_scope is 3, which disables ptrace until reboot"
        fix = "use a Python 3.14+ target (no ptrace needed) or reboot with a lower ptrace_scope"
    elif owner == 0 and target_uid not in (None, 0) and not has_cap:
        why = (
            "it is not dumpable (setuid, or prctl(PR_SET_DUMPABLE, 0)), so only a tracer "
            "with CAP_SYS_PTRACE may attach"
        )
        fix = grant
    elif target_uid is not None and target_uid != euid and not has_cap:
        why = f"it runs as uid {target_uid} and heapspy as uid {euid}"
        if euid == 0:
            why += " without CAP_SYS_PTRACE"
            fix = grant
        else:
            fix = f"run heapspy as that user (sudo -u '#{target_uid}' heapspy ...) or {grant}"
    elif scope in (1, 2) and not has_cap:
        rule = "only a parent may attach" if scope == 1 else "admin only"
        why = f"Yama ptrace_scope is {scope} ({rule})"
        fix = grant
        if scope == 1:
            fix += ", or `echo 0 | sudo tee /proc/sys/kernel/yama/ptrace_scope`"
    else:
        why = "the kernel or a security module (SELinux, AppArmor, seccomp) refused"
        fix = f"run heapspy as the target's user or {grant}; check the audit log"
    return PermissionDenied(f"Not allowed to {what} process {pid}: {why}.", hint=f"Fix: {fix}.")
