"""Retainers of leak sites: which roots hold the live samples of the sites a dump ranks
highest (and of the site a leak rule fired on).

heapspy chooses the sites (``choose``: leaf functions at their line, as report ranks
them, the ``TOP_SITES`` with the most live bytes, plus the leak rule's) and names their
stacks to the agent, which walks the heap from the census's roots in the census's order
(heapspy_agent.retainers) and answers, per stack, the live sampled bytes under each
retention path: the root (``module.NAME``, ``module.Class.attr``, ``thread <name>:
function``, ``unreachable (cyclic garbage)``) and the containers on the way, by type,
with the attribute or key by which each is held where the agent could name it safely.
``collect`` sums that per site into ``Retainers``, which a dump's sidecar keeps under
``retainers`` and report, flamegraph and attach's final table show:

    Shipper.buffer_line (leaky_worker.py:32) 5.5 MiB, held by
        __main__.SHIPPER .pending (list) 100 %

Like the census, an object shared by two roots is the first root's (a cheap
approximation of a dominator tree). The agent's answer and a sidecar read back are
untrusted: the wire schema checks the first, ``from_json`` the second; every name is
escaped when printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from heapspy_agent.schema import OWN_DICT

from heapspy.aggregate import Aggregator
from heapspy.printable import printable
from heapspy.units import format_bytes

# the walk is a census's: ~1 s a million objects in C (benchmarks/retainers_cost.py);
# past this, the agent is told to stop and sends what it found (partial)
RETAINERS_TIMEOUT = 30.0
TOP_SITES = 10  # sites looked into at a dump, the most live bytes first
MAX_STACKS_PER_SITE = 64  # stacks of one site named to the agent, the largest
SHOWN = 3  # holders shown per site in text; JSON has every one the agent sent
PATH_SEPARATOR = " > "
MAX_SITES_READ = 64  # a sidecar's entries read back
MAX_HOLDERS_READ = 16
MAX_PATH_READ = 8
MAX_NAME_READ = 1024
MAX_STEP_READ = 64


@dataclass(frozen=True)
class SiteKey:
    """A site as report ranks it: its leaf function at its line."""

    function: str
    filename: str
    line: int

    def describe(self) -> str:
        short = self.filename.rsplit("/", 1)[-1]
        where = f" ({short}:{self.line})" if short else ""
        return printable(f"{self.function}{where}")


def describe_path(path: tuple[str, ...], steps: tuple[str, ...] = ()) -> str:
    """A retention path as text, escaped: ``__main__.SHIPPER .pending (list)`` where the
    step into the list is named (the root object's own type is then implied by its name),
    ``thread w: run > list`` where it is not. ``steps``: per path element, its name, ""
    (unnamed) or OWN_DICT (an instance's attribute dict, left out: its keys are named as
    the instance's attributes)."""
    named = [(steps[i] if i < len(steps) else "", path[i]) for i in range(1, len(path))]
    named = [(name, kind) for name, kind in named if name != OWN_DICT]
    parts = list(path[:1])
    for i, (name, kind) in enumerate(named):
        if not name:
            parts.append(f"{PATH_SEPARATOR}{kind}")
            continue
        if i == 1 and not named[0][0]:
            parts.pop()  # the root object's type: its name says what it is
        parts.append(f" {name} ({kind})")
    return printable("".join(parts))


@dataclass(frozen=True)
class Holder:
    """One retention path of a site's live samples: the root first, then containers."""

    path: tuple[str, ...]
    samples: int
    bytes: float  # estimated live bytes (upscaled as the dump's inuse_space)
    share: float  # of the site's live sampled bytes, 0..1
    steps: tuple[str, ...] = ()  # per path element, the attribute or key holding it, or ""

    def describe(self) -> str:
        return describe_path(self.path, self.steps)


@dataclass(frozen=True)
class SiteRetainers:
    site: SiteKey
    live_bytes: float  # the site's estimated live bytes when the walk began
    holders: tuple[Holder, ...]
    leak: bool = False  # the site a leak rule fired on

    def headline(self) -> str:
        """``Shipper.buffer_line (w.py:32) 5.5 MiB, held by __main__.SHIPPER > list 100 %``"""
        lead = f"{self.site.describe()} {format_bytes(self.live_bytes)}"
        if not self.holders:
            return f"{lead}: no live samples left"
        first = self.holders[0]
        return f"{lead}, held by {first.describe()} {first.share * 100:.0f} %"

    def lines(self, shown: int = SHOWN) -> list[str]:
        """The headline, then the next holders, one a line (indented)."""
        return [self.headline()] + [
            f"    and by {holder.describe()} {holder.share * 100:.0f} %"
            for holder in self.holders[1:shown]
        ]


@dataclass(frozen=True)
class Retainers:
    """The retainers found for one dump, and what the walk cost the target."""

    sites: tuple[SiteRetainers, ...]
    elapsed: float = 0.0  # wall seconds of the walk
    cpu: float = 0.0  # CPU seconds of the agent thread
    longest_slice: float = 0.0  # the longest single slice (a GIL hold), CPU seconds
    objects: int = 0  # objects walked
    partial: bool = False
    walker: str = ""
    setup: float = 0.0  # seconds the agent took to find the sampled objects (GIL held)

    def for_site(self, function: str, filename: str, line: int) -> SiteRetainers | None:
        for found in self.sites:
            key = found.site
            if (key.function, key.filename, key.line) == (function, filename, line):
                return found
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "sites": [
                {
                    "function": s.site.function,
                    "filename": s.site.filename,
                    "line": s.site.line,
                    "live_bytes": s.live_bytes,
                    "leak": s.leak,
                    "holders": [
                        {
                            "path": list(h.path),
                            "steps": list(h.steps),
                            "samples": h.samples,
                            "bytes": h.bytes,
                            "share": h.share,
                        }  # fmt: skip
                        for h in s.holders
                    ],
                }
                for s in self.sites
            ],
            "elapsed": self.elapsed,
            "cpu": self.cpu,
            "longest_slice": self.longest_slice,
            "objects": self.objects,
            "partial": self.partial,
            "walker": self.walker,
            "setup": self.setup,
        }

    @classmethod
    def from_json(cls, document: Any) -> Retainers | None:
        """Read back a sidecar's ``retainers`` (a file heapspy may not trust): None where
        it is missing or not as written; entries of the wrong type are left out."""
        if not isinstance(document, dict) or not isinstance(document.get("sites"), list):
            return None
        sites = []
        for entry in document["sites"][:MAX_SITES_READ]:
            site = _read_site(entry)
            if site is not None:
                sites.append(site)
        return cls(
            tuple(sites),
            elapsed=_num(document.get("elapsed")),
            cpu=_num(document.get("cpu")),
            longest_slice=_num(document.get("longest_slice")),
            objects=int(_num(document.get("objects"))),
            partial=document.get("partial") is True,
            walker=_str(document.get("walker"))[:16],
            setup=_num(document.get("setup")),
        )


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value) if value == value and abs(value) < 1e30 else 0.0


def _str(value: Any) -> str:
    return value[:MAX_NAME_READ] if isinstance(value, str) else ""


def _read_site(entry: Any) -> SiteRetainers | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("holders"), list):
        return None
    holders = []
    for h in entry["holders"][:MAX_HOLDERS_READ]:
        if not isinstance(h, dict) or not isinstance(h.get("path"), list):
            continue
        path = tuple(_str(p) for p in h["path"][:MAX_PATH_READ])
        steps = h.get("steps")
        named = tuple(_str(p)[:MAX_STEP_READ] for p in steps[:MAX_PATH_READ]) if isinstance(
            steps, list) else ()  # fmt: skip
        holders.append(Holder(path, int(_num(h.get("samples"))), _num(h.get("bytes")),
                              _num(h.get("share")), named))  # fmt: skip
    key = SiteKey(_str(entry.get("function")), _str(entry.get("filename")),
                  int(_num(entry.get("line"))))  # fmt: skip
    return SiteRetainers(key, _num(entry.get("live_bytes")), tuple(holders),
                         entry.get("leak") is True)  # fmt: skip


def choose(agg: Aggregator, n: int = TOP_SITES) -> dict[SiteKey, list[int]]:
    """The sites to look into, each with its stack ids (the most live bytes first): the
    ``n`` leaf functions at their line with the most live bytes, and the leak rule's
    site (the one that grew longest), in that order."""
    period = agg.sampling.period
    stacks: dict[SiteKey, list[tuple[float, int]]] = {}
    for sid, site in agg.sites.items():
        if site.exact or not site.inuse_objects or not site.stack:
            continue
        leaf = agg.shown_stack(site)[-1]
        key = SiteKey(leaf.function, leaf.filename, leaf.line)
        stacks.setdefault(key, []).append((site.live(period)[1], sid))
    ranked = sorted(stacks, key=lambda k: -sum(b for b, _ in stacks[k]))
    chosen = ranked[:n]
    leak = leak_site(agg)
    if leak is not None and leak in stacks and leak not in chosen:
        chosen.append(leak)
    return {
        key: [sid for _, sid in sorted(stacks[key], reverse=True)[:MAX_STACKS_PER_SITE]]
        for key in chosen
    }


def leak_site(agg: Aggregator) -> SiteKey | None:
    """The site a leak rule fires on (``dump_policy.leak_note``): the longest growing."""
    found = agg.longest_growing()
    if not found or not found[0]:
        return None
    leaf = found[0][-1]
    return SiteKey(leaf.function, leaf.filename, leaf.line)


def collect(
    body: dict[str, Any], chosen: dict[SiteKey, list[int]], leak: SiteKey | None
) -> Retainers:
    """Sum a checked RETAINERS body per site: holders by path, most bytes first."""
    per_stack: dict[str, list[Any]] = body.get("stacks", {})
    sites = []
    for key, sids in chosen.items():
        paths: dict[tuple[str, ...], list[float]] = {}
        named: dict[tuple[str, ...], tuple[str, ...]] = {}
        for sid in sids:
            for path, samples, nbytes, steps in per_stack.get(str(sid), ()):
                acc = paths.setdefault(tuple(path), [0, 0.0])
                acc[0] += samples
                acc[1] += nbytes
                if any(steps) and tuple(path) not in named:  # the agent names top paths
                    named[tuple(path)] = tuple(steps)
        total = sum(v[1] for v in paths.values())
        holders = tuple(
            Holder(path, int(v[0]), v[1], v[1] / total if total else 0.0, named.get(path, ()))
            for path, v in sorted(paths.items(), key=lambda kv: (-kv[1][1], kv[0]))
        )
        sites.append(SiteRetainers(key, total, holders, key == leak))
    sites.sort(key=lambda s: -s.live_bytes)
    return Retainers(
        tuple(sites),
        elapsed=float(body.get("elapsed", 0.0)),
        cpu=float(body.get("cpu", 0.0)),
        longest_slice=float(body.get("longest_slice", 0.0)),
        objects=int(body.get("objects", 0)),
        partial=bool(body.get("partial", False)),
        walker=str(body.get("walker", "")),
        setup=float(body.get("setup", 0.0)),
    )


def table_lines(found: Retainers, limit: int = TOP_SITES) -> list[str]:
    """What holds the top sites, for a report or attach's final table."""
    lines = []
    for site in found.sites[:limit]:
        lead = site.lines()
        if site.leak:
            lead[0] = f"{lead[0]}  (leak rule's site)"
        lines.extend(lead)
    if found.partial:
        lines.append("(the walk was stopped early: partial)")
    return lines
