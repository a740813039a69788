"""The memory cgroup a target lives in: how close it is to its limit, and whether the
kernel's OOM killer has struck.

A worker in a container or a systemd unit dies when its cgroup's memory use reaches the
limit, not when the host runs out. So "what runs out next" is read from the cgroup
(v2 ``memory.current``/``memory.max``/``memory.events``/``memory.pressure``; v1
``memory.usage_in_bytes``/``memory.limit_in_bytes``/``memory.failcnt``/
``memory.oom_control``), from heapspy's side: nothing runs in the worker for it.

Use is measured as the *working set* (usage minus inactive file cache, as the kubelet
does): page cache that the kernel reclaims before it kills would otherwise keep a
worker that reads files "near its limit" forever.

Everything here is read as root from cgroupfs, whose directories a delegated user may
own but where nobody can create symlinks; the names come from ``/proc/PID/cgroup``
(kernel-written) and are still checked, and every read is bounded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

MAX_READ = 64 * 1024  # memory.stat is ~1.5 KiB; nothing read here is legitimately bigger
# v1 writes "no limit" as the largest page-aligned signed 64-bit value
V1_UNLIMITED = 1 << 62


def _read(path: Path) -> str | None:
    """A small kernel file, or None when it is missing or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, MAX_READ).decode("ascii", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= V1_UNLIMITED or value < 0 else value


def parse_keyed(text: str | None) -> dict[str, int]:
    """``key value`` lines (memory.events, memory.stat, memory.oom_control)."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            continue
    return out


def parse_pressure(text: str | None) -> tuple[float | None, float | None]:
    """``some``/``full`` avg10 (percent of the last 10 s that tasks stalled on memory)."""
    some = full = None
    for line in (text or "").splitlines():
        kind, _, rest = line.partition(" ")
        for item in rest.split():
            name, _, value = item.partition("=")
            if name == "avg10":
                try:
                    number = float(value)
                except ValueError:
                    continue
                if kind == "some":
                    some = number
                elif kind == "full":
                    full = number
    return some, full


@dataclass(frozen=True)
class MemoryCgroup:
    """Where a target's memory cgroup is, as heapspy reaches it."""

    version: int  # 1 or 2
    name: str  # as /proc/PID/cgroup names it, e.g. /system.slice/api.service
    directory: Path  # that cgroup's directory in heapspy's cgroupfs mount
    mount: Path  # the hierarchy's mount point (v2: for the limits of ancestors)


@dataclass(frozen=True)
class MemoryState:
    """One reading of a memory cgroup."""

    usage: int  # bytes charged, page cache included
    working_set: int  # usage minus inactive file cache: what the kernel cannot drop
    limit: int | None  # the tightest limit on the way to the root; None: unlimited
    events: dict[str, int] = field(default_factory=dict)  # high, max, oom, oom_kill
    psi_some: float | None = None  # avg10, percent
    psi_full: float | None = None
    psi_source: str = ""  # the cgroup's memory.pressure, or the host's /proc/pressure/memory

    @property
    def used_fraction(self) -> float | None:
        """Working set over the limit, or None when nothing limits the cgroup."""
        if not self.limit:
            return None
        return self.working_set / self.limit

    def as_json(self) -> dict[str, object]:
        return {
            "usage": self.usage,
            "working_set": self.working_set,
            "limit": self.limit,
            "events": dict(self.events),
            "psi_some_avg10": self.psi_some,
            "psi_full_avg10": self.psi_full,
            "psi_source": self.psi_source,
        }


def _mounts(mountinfo: str) -> tuple[Path | None, Path | None]:
    """The cgroup2 mount and the v1 memory controller's mount, from mountinfo text."""
    v2 = v1 = None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or fields[3] != "/":
            continue  # a bind mount of a sub-tree (a container's view) is no use here
        mount = Path(fields[4].replace("\\040", " "))
        if tail[0] == "cgroup2" and v2 is None:
            v2 = mount
        elif tail[0] == "cgroup" and "memory" in tail[2].split(",") and v1 is None:
            v1 = mount
    return v2, v1


def _safe_relative(name: str) -> Path | None:
    parts = [p for p in name.split("/") if p]
    if any(p in (".", "..") or "\x00" in p for p in parts):
        return None
    return Path(*parts) if parts else Path(".")


def parse_membership(text: str) -> tuple[str | None, str | None]:
    """(v2 cgroup name, v1 memory cgroup name) from /proc/PID/cgroup text."""
    v2 = v1 = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, name = parts
        if hid == "0" and controllers == "":
            v2 = name
        elif "memory" in controllers.split(","):
            v1 = name
    return v2, v1


def locate(
    pid: int, mountinfo: str | None = None, membership: str | None = None
) -> MemoryCgroup | None:
    """The memory cgroup of ``pid``, or None (no memory controller, or a cgroup heapspy
    cannot see from its own mount namespace)."""
    if mountinfo is None:
        mountinfo = _read(Path("/proc/self/mountinfo")) or ""
    if membership is None:
        membership = _read(Path(f"/proc/{pid}/cgroup")) or ""
    v2_mount, v1_mount = _mounts(mountinfo)
    v2_name, v1_name = parse_membership(membership)
    # v1 first: where both exist (hybrid hosts like this one) the memory controller is
    # bound to v1 and the unified hierarchy has no memory files
    for version, mount, name in ((1, v1_mount, v1_name), (2, v2_mount, v2_name)):
        if mount is None or name is None:
            continue
        rel = _safe_relative(name)
        if rel is None:
            continue
        directory = mount / rel
        probe = "memory.usage_in_bytes" if version == 1 else "memory.current"
        if (directory / probe).is_file():
            return MemoryCgroup(version, name, directory, mount)
    return None


def _v2_limit(cg: MemoryCgroup) -> int | None:
    """The tightest ``memory.max`` from the cgroup up to (not including) the root."""
    tightest = None
    directory = cg.directory
    while directory != cg.mount and cg.mount in directory.parents:
        value = _int(_read(directory / "memory.max"))
        if value is not None and (tightest is None or value < tightest):
            tightest = value
        directory = directory.parent
    return tightest


def read_state(
    cg: MemoryCgroup, host_pressure: Path = Path("/proc/pressure/memory")
) -> MemoryState | None:
    """Read the cgroup now; None when it has gone (the worker moved or the unit stopped)."""
    d = cg.directory
    if cg.version == 2:
        usage = _int(_read(d / "memory.current"))
        if usage is None:
            return None
        stat = parse_keyed(_read(d / "memory.stat"))
        limit = _v2_limit(cg)
        raw = parse_keyed(_read(d / "memory.events"))
        events: dict[str, int] = {k: raw[k] for k in ("high", "max", "oom", "oom_kill") if k in raw}
        pressure = _read(d / "memory.pressure")
        inactive = stat.get("inactive_file", 0)
    else:
        usage = _int(_read(d / "memory.usage_in_bytes"))
        if usage is None:
            return None
        stat = parse_keyed(_read(d / "memory.stat"))
        own = _int(_read(d / "memory.limit_in_bytes"))
        hier = (
            _int(str(stat["hierarchical_memory_limit"]))
            if "hierarchical_memory_limit" in stat
            else None
        )
        limits = [v for v in (own, hier) if v is not None]
        limit = min(limits) if limits else None
        oom = parse_keyed(_read(d / "memory.oom_control"))
        events = {"max": _int(_read(d / "memory.failcnt")) or 0}  # v1: hits of the limit
        if "oom_kill" in oom:
            events["oom_kill"] = oom["oom_kill"]
        pressure = None  # v1 has no per-cgroup PSI file
        inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
    source = str(d / "memory.pressure")
    if pressure is None:
        pressure = _read(host_pressure)
        source = str(host_pressure) if pressure is not None else ""
    some, full = parse_pressure(pressure)
    working = max(0, usage - inactive)
    return MemoryState(usage, working, limit, events, some, full, source)
