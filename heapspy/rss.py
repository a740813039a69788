"""Where a process's resident memory is: every byte of RSS in one category.

The kernel knows which pages are resident and in which mapping (``/proc/PID/smaps``);
the allocators know what their mappings hold (pymalloc's arenas, glibc's heaps, read in
the target by the agent: ``agent/heapspy_agent/memstats.py``). Put side by side they
answer "of these 812 MiB, what is what":

- mappings of files (code, data of libraries, mapped files) and shared memory, from
  their paths; thread stacks, from each thread's stack pointer;
- glibc's heaps (``[heap]`` and the 64 MiB-aligned heaps of its other arenas): what its
  ``mallinfo2`` says is in use and free-but-held there (``malloc_trim`` territory);
- the other anonymous mappings: pymalloc's arenas (its own count of blocks in use and
  free), glibc's mmapped chunks (``hblkhd``: big allocations), and what is left: memory
  mapped by other means (``mmap.mmap``, extensions' own mappings);
- unexplained: RSS minus all of the above, never hidden. Allocators count what they
  hold, the kernel what is resident, so it can be a little negative (a free chunk whose
  pages were given back) as well as positive.

Everything here is read by heapspy, as root: smaps is written by the kernel, and the
paths in it (target-chosen) are only compared, never opened; reads are bounded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from heapspy.channel import AgentCall
from heapspy.printable import printable
from heapspy.units import format_bytes

MAX_SMAPS = 64 * 1024 * 1024  # ~300 bytes a mapping: 200,000 mappings
HEAP_MAX = 64 * 1024 * 1024  # glibc's HEAP_MAX_SIZE on 64-bit: non-main arena heaps
_HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S{4}) \S+ \S+ \d+\s*(.*)$")
_SHARED_PATHS = ("/dev/shm/", "/memfd:", "/SYSV", "/dev/zero")
_ALLOCATORS = (
    ("jemalloc", "libjemalloc"),
    ("tcmalloc", "libtcmalloc"),
    ("mimalloc", "libmimalloc"),
    ("musl", "ld-musl"),
)


@dataclass(frozen=True)
class Mapping:
    start: int
    end: int
    perms: str
    path: str
    rss: int
    anonymous: int

    def contains(self, address: int) -> bool:
        return self.start <= address < self.end


def _read_bounded(path: str, limit: int) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        total = 0
        while total < limit:
            chunk = os.read(fd, min(1 << 20, limit - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def parse_smaps(text: str) -> list[Mapping]:
    maps: list[Mapping] = []
    current: dict[str, Any] | None = None

    def close() -> None:
        if current is not None:
            maps.append(
                Mapping(
                    current["start"],
                    current["end"],
                    current["perms"],
                    current["path"],
                    current.get("Rss", 0),
                    current.get("Anonymous", 0),
                )
            )

    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            close()
            current = {
                "start": int(header[1], 16),
                "end": int(header[2], 16),
                "perms": header[3],
                "path": header[4],
            }
            continue
        if current is None:
            continue
        key, _, rest = line.partition(":")
        if key in ("Rss", "Anonymous"):
            parts = rest.split()
            if parts and parts[0].isdigit():
                current[key] = int(parts[0]) * 1024
    close()
    return maps


def stack_pointers(pid: int) -> list[int]:
    """Each thread's stack pointer where the kernel shows it (a thread in a system call
    or stopped; a running one shows "running" and is found by its mapping otherwise)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids[:100000]:
        try:
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                fields = f.read(512).split()
        except OSError:
            continue
        if len(fields) >= 3 and fields[-2].startswith("0x"):
            out.append(int(fields[-2], 16))
    return out


def detect_allocator(maps: list[Mapping]) -> str:
    """The C allocator the process uses: glibc's, unless another one is mapped."""
    paths = {os.path.basename(m.path) for m in maps if m.path.startswith("/")}
    for name, prefix in _ALLOCATORS:
        if any(p.startswith(prefix) for p in paths):
            return name
    if any(p.startswith("libc.so.6") or p.startswith("libc-2.") for p in paths):
        return "glibc"
    return "unknown"


@dataclass(frozen=True)
class Category:
    name: str
    bytes: int
    detail: str = ""


@dataclass(frozen=True)
class Breakdown:
    """RSS in categories that add up to it (``unexplained`` included)."""

    rss: int
    allocator: str  # glibc, jemalloc, tcmalloc, mimalloc, musl, unknown
    categories: tuple[Category, ...]
    unexplained: int
    threads: int
    trim_estimate: int | None  # what malloc_trim(0) would likely give back (glibc)
    fragmentation: dict[str, float] = field(default_factory=dict)

    def category(self, prefix: str) -> int:
        """Bytes of the categories whose name starts with ``prefix``."""
        return sum(c.bytes for c in self.categories if c.name.startswith(prefix))

    @property
    def native_in_use(self) -> int | None:
        """What the C allocator holds in use (None: not glibc, or not asked)."""
        if not any(c.name.startswith("C allocator: ") for c in self.categories):
            return None
        return self.category("C allocator: in use") + self.category("C allocator: mmapped")

    def to_json(self) -> dict[str, Any]:
        return {
            "rss": self.rss,
            "allocator": self.allocator,
            "categories": [
                {"name": c.name, "bytes": c.bytes, "detail": c.detail} for c in self.categories
            ],
            "unexplained": self.unexplained,
            "threads": self.threads,
            "trim_estimate": self.trim_estimate,
            "fragmentation": dict(self.fragmentation),
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Breakdown:
        return cls(
            rss=int(body["rss"]),
            allocator=str(body.get("allocator", "unknown")),
            categories=tuple(
                Category(str(c["name"]), int(c["bytes"]), str(c.get("detail", "")))
                for c in body.get("categories", ())
            ),
            unexplained=int(body.get("unexplained", 0)),
            threads=int(body.get("threads", 0)),
            trim_estimate=None if body.get("trim_estimate") is None else int(body["trim_estimate"]),
            fragmentation={str(k): float(v) for k, v in (body.get("fragmentation") or {}).items()},
        )


def _is_arena_heap(m: Mapping, nxt: Mapping | None) -> bool:
    """A heap of one of glibc's non-main arenas: HEAP_MAX-aligned, and it or it with the
    reserved (PROT_NONE) rest right after it spans HEAP_MAX."""
    if m.path or m.start % HEAP_MAX or not m.perms.startswith("rw"):
        return False
    if m.end - m.start == HEAP_MAX:
        return True
    return (
        nxt is not None
        and nxt.start == m.end
        and nxt.perms.startswith("---")
        and nxt.end - m.start == HEAP_MAX
    )


def breakdown(
    maps: list[Mapping],
    sps: list[int],
    threads: int,
    allocator: str,
    pymalloc: dict[str, int] | None,
    glibc: dict[str, int] | None,
) -> Breakdown:
    """Reconcile the kernel's mappings with the allocators' accounts."""
    rss = sum(m.rss for m in maps)
    files = shared = stacks = heaps = anon_rest = 0
    stack_maps = 0
    for i, m in enumerate(maps):
        nxt = maps[i + 1] if i + 1 < len(maps) else None
        if m.path == "[stack]" or (not m.path and any(m.contains(sp) for sp in sps)):
            stacks += m.rss
            stack_maps += 1
        elif m.path.startswith(_SHARED_PATHS) or m.path.startswith("/dev/zero"):
            shared += m.rss
        elif m.path == "[heap]" or _is_arena_heap(m, nxt):
            heaps += m.rss
        elif m.path and not m.path.startswith("["):
            files += m.rss
        elif m.path in ("", "[anon]") or m.path.startswith("[anon:"):
            anon_rest += m.rss
        else:  # [vdso], [vvar], [vsyscall]: the kernel's
            files += m.rss
    cats: list[Category] = []
    py = pymalloc or {}
    arenas_bytes = py.get("arenas", 0) * py.get("arena_size", 0)
    if py:
        used = py.get("allocated_bytes", 0)
        cats.append(
            Category(
                "pymalloc: objects in use",
                used,
                f"{py.get('blocks', 0):,} blocks of <= 512 B in {py.get('arenas', 0)} arenas",
            )
        )
        cats.append(
            Category(
                "pymalloc: free in its arenas",
                max(0, arenas_bytes - used),
                "free blocks, empty pools and overhead inside arenas pymalloc keeps",
            )
        )
    trim = None
    frag: dict[str, float] = {}
    g = glibc or {}
    mmapped = 0
    if g:
        in_use, free = g.get("uordblks", 0), g.get("fordblks", 0)
        mmapped = g.get("hblkhd", 0)
        cats.append(
            Category(
                "C allocator: in use (heaps)",
                min(in_use, heaps),
                "malloc'd and not freed: Python objects > 512 B, extensions' memory",
            )
        )
        free_resident = max(0, heaps - min(in_use, heaps))
        cats.append(
            Category(
                "C allocator: free but held",
                free_resident,
                f"freed, kept by glibc in {g.get('arenas', 1)} arena(s); "
                f"top pad {g.get('keepcost', 0):,} B",
            )
        )
        cats.append(
            Category(
                "C allocator: mmapped chunks",
                min(mmapped, anon_rest),
                f"{g.get('hblks', 0)} allocations big enough for their own mapping",
            )
        )
        trim = max(0, min(free, free_resident) - 4096 * max(1, g.get("arenas", 1)))
        if in_use + free:
            frag["c_free_share"] = free / (in_use + free)
    elif heaps:
        cats.append(
            Category(f"C allocator heaps ({allocator})", heaps, "what its heaps hold is unknown")
        )
    if arenas_bytes:
        frag["pymalloc_free_share"] = max(0, arenas_bytes - py.get("allocated_bytes", 0)) / (
            arenas_bytes
        )
    other = anon_rest - min(arenas_bytes, anon_rest) - min(mmapped, anon_rest)
    cats.append(
        Category(
            "other anonymous mappings",
            max(0, other),
            "mapped by other means: mmap.mmap, extensions' own mappings",
        )
    )
    cats.append(Category("thread stacks", stacks, f"{threads} threads"))
    cats.append(Category("file-backed", files, "code and data of libraries, mapped files"))
    if shared:
        cats.append(
            Category(
                "shared memory",
                shared,
                "shared anonymous mappings (Python's mmap.mmap(-1, n)), /dev/shm, memfd, SysV",
            )
        )
    unexplained = rss - sum(c.bytes for c in cats)
    return Breakdown(rss, allocator, tuple(cats), unexplained, threads, trim, frag)


def read_maps(pid: int) -> tuple[list[Mapping], list[int], int]:
    """The process's mappings, its threads' stack pointers and its thread count."""
    maps = parse_smaps(_read_bounded(f"/proc/{pid}/smaps", MAX_SMAPS))
    sps = stack_pointers(pid)
    try:
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        threads = 0
    return maps, sps, threads


FRAGMENTED_SHARE = 0.30  # free-but-held share of an allocator's memory called fragmented
FRAGMENTED_RSS = 0.10  # ... when it is also this share of RSS


def verdict(b: Breakdown, heap_growth: int | None = None, rss_growth: int | None = None) -> str:
    """Fragmented (allocators hold much free memory), leaking Python objects (the live
    heap grows), or growing outside Python's objects (RSS grows, the live heap does not)?"""
    free = b.category("C allocator: free") + b.category("pymalloc: free")
    held = free / b.rss if b.rss else 0.0
    shares = b.fragmentation.values()
    fragmented = held >= FRAGMENTED_RSS and any(s >= FRAGMENTED_SHARE for s in shares)
    growing = heap_growth is not None and heap_growth > 0.05 * b.rss
    parts = []
    if fragmented:
        parts.append(
            f"looks fragmented: {format_bytes(free)} ({held:.0%} of RSS) is memory the "
            "allocators hold free"
            + (
                f"; malloc_trim would likely give back ~{format_bytes(b.trim_estimate)}"
                if b.trim_estimate
                else ""
            )
        )
    if growing:
        assert heap_growth is not None
        parts.append(
            f"looks like a leak: the live Python heap grew by {format_bytes(heap_growth)} "
            "during the session"
        )
    native = rss_growth is not None and rss_growth > 0.05 * b.rss
    if native and (heap_growth is None or heap_growth < 0.5 * (rss_growth or 0)):
        assert rss_growth is not None
        grew = format_bytes(heap_growth) if heap_growth is not None else "?"
        parts.append(
            f"grows outside Python's objects: RSS grew by {format_bytes(rss_growth)} during "
            f"the session, the live Python heap by {grew}; see the C allocator's in use "
            "(extensions' memory, Python objects over 512 B, which the allocation view "
            "counts only from Python's allocators) and other anonymous mappings"
        )
    if not parts:
        parts.append("neither fragmented nor growing")
    return "; ".join(parts)


def format_breakdown(
    b: Breakdown, heap_growth: int | None = None, rss_growth: int | None = None
) -> list[str]:
    """Lines for people: one per category, with its share of RSS, then the verdict."""
    lines = [f"RSS {format_bytes(b.rss)} (C allocator: {b.allocator}):"]
    rows = [
        *((c.bytes, c.name, c.detail) for c in b.categories),
        (b.unexplained, "unexplained", ""),
    ]
    for nbytes, name, detail in rows:
        share = 100.0 * nbytes / b.rss if b.rss else 0.0
        more = f"  ({printable(detail)})" if detail else ""
        lines.append(f"  {format_bytes(nbytes):>11} {share:5.1f}%  {name}{more}")
    lines.append(f"  Verdict: {verdict(b, heap_growth, rss_growth)}")
    return lines


def measure(pid: int, agent_call: AgentCall | None) -> Breakdown | None:
    """The breakdown now: the kernel's side read here, the allocators' asked of the
    agent (when one is connected: ``agent_call("memstats", glibc=...)``). None when the
    process is gone."""
    try:
        maps, sps, threads = read_maps(pid)
    except OSError:
        return None
    allocator = detect_allocator(maps)
    pymalloc = glibc = None
    if agent_call is not None:
        reply = agent_call("memstats", glibc=allocator == "glibc")
        if reply.get("ok"):
            pymalloc = reply.get("pymalloc") or None
            glibc = reply.get("glibc") or None
    return breakdown(maps, sps, threads, allocator, pymalloc, glibc)


def memory_of(sidecar: dict[str, Any] | None) -> Breakdown | None:
    """The breakdown a dump's sidecar carries (None: none, or from an older heapspy)."""
    body = (sidecar or {}).get("memory")
    if not isinstance(body, dict):
        return None
    try:
        return Breakdown.from_json(body)
    except (KeyError, TypeError, ValueError):
        return None


def growth_of(sidecar: dict[str, Any] | None, column: str) -> int | None:
    """How much ``column`` (heap, rss) grew over the sidecar's series (first to last)."""
    doc = sidecar or {}
    columns, series = doc.get("series_columns"), doc.get("rss_series")
    if not isinstance(columns, list) or column not in columns or not isinstance(series, list):
        return None
    i = columns.index(column)
    values = [r[i] for r in series if isinstance(r, list) and len(r) > i and isinstance(r[i], int)]
    return values[-1] - values[0] if len(values) >= 2 else None
