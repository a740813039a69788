"""Fold the agent's per-interval deltas into the current heap picture.

The agent sends each stack once (interned by id) and afterwards only the sites whose
numbers changed; this class keeps the running state, names frames that arrive without a
function name, and produces the ``HeapProfile`` that the dump writer serialises.

The agent evicts stacks that hold nothing live and have gone quiet (so that what it holds
in the target follows the live heap): their ids are sent, and may come back later as
other stacks. Their sites are retired here, keyed by their frames and label set, with
what they allocated; a stack with the same frames and labels that comes back, under any
id, takes those figures up again, so alloc_* stay cumulative since attach.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from heapspy_agent.exact import LABEL_RATE
from heapspy_agent.schema import EXACT, MAX_LABEL_SETS, OVERFLOW_FUNCTION, SAMPLED, Sampling

from heapspy.frame_names import from_source
from heapspy.heap_sites import Site, retired_key
from heapspy.label_shares import Shares, label_shares, split_by_shares
from heapspy.live_types import split_by_type
from heapspy.model import (
    CORO,
    NO_LABEL,
    TASK,
    THREAD,
    THREAD_ID,
    AllocTotals,
    Frame,
    HeapProfile,
    Labels,
    SiteCounts,
    Stack,
    TopRow,
    label_value,
)
from heapspy.runtime_stats import RuntimeStats
from heapspy.symbolize import Symbolizer

# What one session keeps of what its agent sends, whatever the agent sends: stacks past
# these are dropped and counted (``dropped_stacks``, in status and the sidecar). A real
# program has a few thousand distinct allocation stacks; the limits leave room for far
# more while keeping what one session holds near 30 MB at worst (measured: 80 MB at 200k
# distinct frames of 12-frame stacks with distinct names, so ~26 MB at 64k). With the
# 8 MiB frame limit, a flood of 6 frames x 10k such stacks peaks heapspy at ~155 MiB RSS
# (tests/hostile/test_fake_agent.py; it once took 472 MB).
MAX_SITES = 50_000
MAX_DISTINCT_FRAMES = 64_000
MAX_FRAME_REFS = 2_000_000  # frames summed over all stacks kept
MAX_TEXT = 4 * 1024 * 1024  # characters of distinct function and file names
LABELLED_SHARE = 0.25  # of the limits, for exact mode's label samples (Aggregator.labelled)

EXACT_SPLIT_NOTE = (
    "exact mode: the thread, thread_id and task labels split each stack's exact bytes in "
    "proportion of the label samples (one per {rate} bytes) of the same frames; stacks no "
    "sample saw carry none"
)


@dataclass(frozen=True)
class Point:
    """One entry of the bounded time series."""

    time: float
    rss: int | None
    heap: int
    cpu: float | None = None  # percent of one core since the previous point
    fds: int | None = None
    uss: int | None = None  # sampled every few intervals: it walks the page tables
    gc_seconds: float | None = None  # time in garbage collection since attach
    threads: int | None = None
    asyncio_tasks: int | None = None  # unfinished, over every running loop
    rate: int | None = None  # the sampling rate in force (it changes with `heapspy rate`)


@dataclass(frozen=True)
class ProcessFacts:
    """What heapspy sees of the target from outside (psutil)."""

    rss: int | None = None
    cpu: float | None = None
    fds: int | None = None
    uss: int | None = None


@dataclass
class Aggregator:
    # what the session asked for until the agent's READY says what it does, then that
    # (and after each `heapspy rate`, the agent's answer)
    sampling: Sampling
    symbolizer: Symbolizer = field(default_factory=Symbolizer)
    started: float = field(default_factory=time.time)
    history: int = 3600
    sites: dict[int, Site] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    series: deque[Point] = field(default_factory=deque)
    intervals: int = 0  # the agent's collections (a frame may stand for several)
    last_seq: int = 0  # the ``seq`` of the last SAMPLES frame
    reports: int = 0  # SAMPLES frames folded in
    streaks: dict[int, int] = field(default_factory=dict)  # site -> intervals grown in a row
    qualify: bool = False  # target < 3.11: frame names are co_name only
    dropped_stacks: int = 0  # stacks not kept: beyond the limits above
    agent_dropped: int = 0  # site entries the agent left out to keep its frames small
    # sites whose stacks the agent evicted, by label set and their (shared) frames
    retired: dict[tuple[int, ...], Site] = field(default_factory=dict)
    _frames: dict[tuple[str, str, int], Frame] = field(default_factory=dict)
    _text: dict[str, str] = field(default_factory=dict)
    _text_size: int = 0
    _frame_refs: int = 0
    # label set id -> labels, as the agent named them (each id once; see add_labels)
    label_sets: dict[int, Labels] = field(default_factory=dict)
    # exact mode: the label samples the shim takes beside tracemalloc, folded in as a
    # sampled session's (heapspy_agent.exact); they split the exact stacks by thread and
    # task (label_shares). None until the agent sends some.
    labelled: Aggregator | None = None
    # the share of the limits above this aggregator may fill: exact mode's label samples
    # (far fewer stacks than tracemalloc's) get LABELLED_SHARE, so that a hostile agent
    # filling both holds at most 1.25 times what one session could
    limit_share: float = 1.0

    def labelled_part(self) -> Aggregator | None:
        """The aggregator of exact mode's label samples (created at their first frame);
        None outside exact mode, where such frames are ignored."""
        if self.sampling.mode != EXACT:
            return None
        if self.labelled is None:
            self.labelled = Aggregator(
                Sampling(SAMPLED, LABEL_RATE, self.sampling.frames),
                symbolizer=self.symbolizer,
                history=1,
                qualify=self.qualify,
                limit_share=LABELLED_SHARE,
            )
        return self.labelled

    def apply_labelled(self, body: dict[str, Any]) -> None:
        """Fold in a checked SAMPLES body marked ``labelled`` (exact mode's label samples,
        sent before the exact frame of the same collection)."""
        part = self.labelled_part()
        if part is None:
            return
        rate = int(body.get("totals", {}).get("rate", 0) or 0)
        if rate > 1 and rate != part.sampling.rate:
            part.sampling = Sampling(SAMPLED, rate, part.sampling.frames)
        part.apply(body)

    def add_labelled_stacks(self, stacks: list[dict[str, Any]]) -> None:
        """New stacks of exact mode's label samples (a STACKS frame marked ``labelled``)."""
        part = self.labelled_part()
        if part is not None:
            part.add_stacks(stacks)

    def add_stacks(self, stacks: list[dict[str, Any]]) -> None:
        """Keep new stacks (from a checked SAMPLES or STACKS frame), within the limits."""
        exact = self.sampling.mode == EXACT
        for stack in stacks:
            sid, raw = int(stack["id"]), stack["frames"]
            if sid in self.sites:
                continue  # ids are sent once (until evicted); a repeat must not grow anything
            kept = len(self.sites) + len(self.retired)
            share = self.limit_share
            if kept >= MAX_SITES * share or self._frame_refs + len(raw) > MAX_FRAME_REFS * share:
                # a stack retired with these frames may still come back: it is not new
                if not self._revive(sid, raw, exact, stack.get("labels", 0), stack.get("native")):
                    self.dropped_stacks += 1
                continue
            frames = []
            for func, fn, ln in raw:
                frame = self._frame(func, fn, ln)
                if frame is None:
                    break
                frames.append(frame)
            else:
                if not self._add_native(frames, stack.get("native")):
                    self.dropped_stacks += 1
                    continue
                frozen = tuple(frames)
                label_set = int(stack.get("labels", 0))
                prior = self.retired.pop(retired_key(frozen, label_set), None)
                site = self.sites[sid] = Site(frozen, exact, label_set=label_set)
                if prior is not None:
                    site.carried = prior.carry()
                    self._absorb_into(site)
                else:
                    self._frame_refs += len(frames)
                continue
            self.dropped_stacks += 1

    def _add_native(self, frames: list[Frame], pcs: list[int] | None) -> bool:
        """Append the stack's native frames (--native-frames: return addresses, leaf
        first) below its Python leaf, named from the target's files; False past the
        limits on distinct frames."""
        if not pcs:
            return True
        for name, path in reversed(self.symbolizer.native(pcs)):
            key = (name, path, 0)
            frame = self._frames.get(key)
            if frame is None:  # named as the symbolizer said: no Python renaming
                if len(self._frames) >= MAX_DISTINCT_FRAMES * self.limit_share:
                    return False
                frame = self._frames[key] = Frame(name, path, 0, native=True)
            frames.append(frame)
        return True

    def _revive(
        self, sid: int, raw: list[Any], exact: bool, stack_labels: Any, native: Any
    ) -> bool:
        """Past the limits: keep the stack only when it comes back from retirement."""
        frames = []
        for func, fn, ln in raw:
            frame = self._frames.get((func, fn, ln))
            if frame is None:
                return False
            frames.append(frame)
        if not self._add_native(frames, native):
            return False
        label_set = int(stack_labels)
        prior = self.retired.pop(retired_key(tuple(frames), label_set), None)
        if prior is None:
            return False
        site = self.sites[sid] = Site(prior.stack, exact, label_set=label_set)
        site.carried = prior.carry()
        self._absorb_into(site)
        return True

    @staticmethod
    def _absorb_into(site: Site) -> None:
        """A revived site's figures are its carried ones until the agent sends its own."""
        c = site.carried
        site.alloc_objects, site.alloc_bytes = c[0], c[1]
        site.estimate = (c[2], c[3], 0.0, 0.0)
        site.variance = (c[4], c[5], 0.0, 0.0)

    def evict(self, ids: list[int]) -> None:
        """Retire the sites of the stacks the agent evicted (after this frame's numbers)."""
        for sid in ids:
            site = self.sites.pop(int(sid), None)
            if site is None:
                continue
            self.streaks.pop(int(sid), None)
            site.retire()
            key = retired_key(site.stack, site.label_set)
            previous = self.retired.get(key)
            if previous is None:
                self.retired[key] = site
            else:  # the same frames under two ids (code compiled twice): one site
                previous.absorb(site)

    def _frame(self, func: str, filename: str, line: int) -> Frame | None:
        """The one Frame object for these values (shared by every stack that has it);
        None once the limits on distinct frames and names are reached."""
        key = (func, filename, line)
        frame = self._frames.get(key)
        if frame is not None:
            return frame
        if len(self._frames) >= MAX_DISTINCT_FRAMES * self.limit_share:
            return None
        new_text = sum(len(t) for t in {func, filename} if t not in self._text)
        if self._text_size + new_text > MAX_TEXT * self.limit_share:
            return None
        for t in (func, filename):
            if t not in self._text:
                self._text[t] = t
                self._text_size += len(t)
        frame = Frame(
            self._name(self._text[func], self._text[filename], line), self._text[filename], line
        )
        self._frames[key] = frame
        return frame

    def add_labels(self, sets: dict[str, dict[str, Any]]) -> None:
        """Keep the label sets of a checked SAMPLES frame (``heapspy_agent.labels``): each
        id named once, at most MAX_LABEL_SETS. Values become strings; the coroutine, sent
        as a frame, is named as stack frames are (qualified before 3.11 too)."""
        for key, wire in sets.items():
            lid = int(key)
            if lid in self.label_sets or len(self.label_sets) >= MAX_LABEL_SETS:
                continue
            labels: dict[str, str] = {}
            if "thread" in wire:
                labels[THREAD] = wire["thread"]
            if "thread_id" in wire:
                labels[THREAD_ID] = str(wire["thread_id"])
            if "task" in wire:
                labels[TASK] = wire["task"]
            if "coro" in wire:
                frame = self._frame(*wire["coro"])
                if frame is not None:
                    labels[CORO] = frame.function
            self.label_sets[lid] = tuple(sorted(labels.items()))

    def labels_of(self, site: Site) -> Labels:
        return self.label_sets.get(site.label_set, ())

    def apply(self, body: dict[str, Any]) -> None:
        """Fold one checked SAMPLES body in (``heapspy_agent.schema``)."""
        exact = self.sampling.mode == EXACT
        self.add_labels(body.get("labels", {}))
        self.add_stacks(body.get("stacks", []))
        self.agent_dropped += int(body.get("dropped", 0))
        streaks: dict[int, int] = {}
        for sid, (count, size) in body.get("inuse", {}).items():
            site = self.sites.get(int(sid))
            if site is None:
                continue
            if size > site.inuse_bytes:
                streaks[int(sid)] = self.streaks.get(int(sid), 0) + 1
            site.types = None  # changed since its samples were classified
            if exact:
                # tracemalloc keeps only live blocks: growth seen between intervals is the
                # best lower bound of what was allocated (documented in the dump).
                site.alloc_objects += max(0, count - site.inuse_objects)
                site.alloc_bytes += max(0, size - site.inuse_bytes)
            site.inuse_objects, site.inuse_bytes = int(count), int(size)
        for sid, (count, size) in body.get("alloc", {}).items():
            site = self.sites.get(int(sid))
            if site is not None:
                c = site.carried
                site.alloc_objects, site.alloc_bytes = c[0] + int(count), c[1] + int(size)
        for sid, (a_n, a_b, l_n, l_b) in body.get("est", {}).items():
            site = self.sites.get(int(sid))
            if site is not None:
                c = site.carried
                site.estimate = (c[2] + float(a_n), c[3] + float(a_b), float(l_n), float(l_b))
                site.types = None
        for sid, (a_n, a_b, l_n, l_b) in body.get("var", {}).items():
            site = self.sites.get(int(sid))
            if site is not None:
                c = site.carried
                site.variance = (c[4] + float(a_n), c[5] + float(a_b), float(l_n), float(l_b))
        # A frame whose seq is more than one past the last stands for the collections
        # held back meanwhile (agent/heapspy_agent/quiet.py): they had nothing live
        # changed, so nothing grew in them and the streaks started again.
        seq = int(body.get("seq", 0))
        spanned = seq - self.last_seq if self.last_seq and seq > self.last_seq else 1
        self.last_seq = seq
        if spanned > 1:
            streaks = dict.fromkeys(streaks, 1)
        self.streaks = streaks
        self.evict(body.get("evicted", []))
        self.totals.update(body.get("totals", {}))
        self.facts.update(body.get("facts", {}))
        self.intervals += spanned
        self.reports += 1

    def _name(self, func: str, filename: str, line: int) -> str:
        """The frame's qualified name, the same in both modes.

        Exact mode sends no name: it comes from the source. Before 3.11 a code object
        has only ``co_name`` (``buffer_line``): the source gives the qualified name
        (``Shipper.buffer_line``), used when it ends in that same name.
        """
        if func and not self.qualify:
            return func
        named = self.symbolizer.function(filename, line)
        if not func or named == func or named.endswith("." + func):
            return named
        # a generator expression or lambda: 3.11's qualified name, built from its source
        return from_source(func, named) or func

    def growing(self, k: int) -> list[int]:
        """Element i: how many sites grew in each of the last i+1 intervals."""
        counts = [0] * k
        for streak in self.streaks.values():
            for i in range(min(streak, k)):
                counts[i] += 1
        return counts

    def longest_growing(self) -> tuple[Stack, int] | None:
        if not self.streaks:
            return None
        sid = max(self.streaks, key=lambda s: (self.streaks[s], self.sites[s].inuse_bytes))
        return self.shown_stack(self.sites[sid]), self.streaks[sid]

    def all_sites(self) -> list[Site]:
        """The sites of the stacks the agent holds, then those it evicted."""
        return [*self.sites.values(), *self.retired.values()]

    def shown_stack(self, site: Site) -> Stack:
        """The stack as reports show it: the shim's overflow stack says how many samples
        it holds, taken while its stack table was full (their stacks are not known)."""
        stack = site.stack
        if len(stack) == 1 and stack[0].function == OVERFLOW_FUNCTION and not stack[0].filename:
            samples = int(self.totals.get("overflow_samples", 0) or 0)
            return (Frame(f"[stack table full: {samples} samples]", "", 0),)
        return stack

    def record(self, facts: ProcessFacts) -> Point:
        runtime = RuntimeStats.from_facts(self.facts)
        point = Point(
            time.time(),
            facts.rss,
            self.heap_estimate(),
            facts.cpu,
            facts.fds,
            facts.uss,
            runtime.gc_seconds if runtime else None,
            runtime.threads if runtime else None,
            sum(runtime.asyncio_tasks) if runtime and runtime.asyncio_tasks else None,
            self.sampling.rate,
        )
        self.series.append(point)
        while len(self.series) > self.history:
            self.series.popleft()
        return point

    def heap_estimate(self) -> int:
        """Live Python heap in bytes (exact in exact mode, upscaled in sampled mode)."""
        return int(sum(site.live(self.sampling.period)[1] for site in self.sites.values()))

    def profile(self, comments: tuple[str, ...] = ()) -> HeapProfile:
        sampled: list[tuple[Stack, SiteCounts]] = []
        exact: list[tuple[Stack, SiteCounts]] = []
        shares = self._shares()
        for whole in self.all_sites():
            if not (whole.inuse_objects or whole.alloc_objects):
                continue
            stack = self.shown_stack(whole)
            for labels, site in self._parts(whole, shares):
                if not (site.inuse_objects or site.alloc_objects):
                    continue
                counts = SiteCounts(
                    site.alloc_objects,
                    site.alloc_bytes,
                    site.inuse_objects,
                    site.inuse_bytes,
                    site.estimate,
                    labels,
                    site.variance,
                )
                (exact if site.exact else sampled).append((stack, counts))
        notes = list(comments)
        if self.sampling.mode == EXACT:
            notes.append(
                "exact mode (tracemalloc): alloc_* counts only growth seen live at "
                "each interval, not every allocation"
            )
            if shares:
                notes.append(self.exact_split_note())
        now = time.time()
        return HeapProfile(
            rate=self.sampling.period,
            time_ns=int(now * 1e9),
            duration_ns=int((now - self.started) * 1e9),
            sampled=tuple(sampled),
            exact=tuple(exact),
            comments=tuple(notes),
        )

    def alloc_totals(self) -> AllocTotals | None:
        t = self.totals
        if "allocated_bytes" not in t:
            return None
        return AllocTotals(
            int(t["allocated_bytes"]),
            int(t.get("allocations", 0)),
            None if t.get("freed_bytes") is None else int(t["freed_bytes"]),
            None if t.get("frees") is None else int(t["frees"]),
            tuple((int(k), int(v)) for k, v in t.get("size_classes", [])),
        )

    def all_parts(self) -> Iterator[tuple[Labels, Site]]:
        """Every site as the dump shows it: split by type (``live_types.split_by_type``)
        or, exact, by its samples' threads and tasks (``label_shares``), evicted ones too
        (what they allocated counts)."""
        shares = self._shares()
        for site in self.all_sites():
            yield from self._parts(site, shares)

    def exact_split_note(self) -> str:
        """Exact mode with label samples: how its thread and task labels are made."""
        if self.labelled is None or self.sampling.mode != EXACT:
            return ""
        return EXACT_SPLIT_NOTE.format(rate=self.labelled.sampling.rate)

    def _shares(self) -> Shares:
        """Exact mode: the threads and tasks of the label samples, per stack."""
        if self.labelled is None or self.sampling.mode != EXACT:
            return {}
        return label_shares(self.labelled.all_parts(), self.labelled.sampling.period)

    def _parts(self, site: Site, shares: Shares) -> list[tuple[Labels, Site]]:
        if site.exact and shares:
            return split_by_shares(site, self.labels_of(site), shares)
        return split_by_type(site, self.labels_of(site))

    def _whole_sites(self) -> Iterator[tuple[Labels, Site]]:
        for site in self.all_sites():
            yield (), site

    def top_sites(self, n: int, order: str = "inuse_space", by: str = "") -> list[TopRow]:
        """The ``n`` leaf functions with the most live (``inuse_space``) or allocated
        (``alloc_space``) bytes, largest first; functions with none left out. With ``by``
        a label key (``LABEL_KEYS``), rows are that label's values instead of functions
        (``NO_LABEL`` for samples without it).

        In sampled mode each row also carries the variances of its two byte estimates,
        each site's summed over its samples at their own rates (``Site.live_variance``).
        """
        by_func: dict[str, list[float]] = {}
        for labels, site in self.all_parts() if by else self._whole_sites():
            if not site.stack or not (site.inuse_objects or site.alloc_objects):
                continue
            if by:
                name = label_value(labels, by) or NO_LABEL
            else:
                leaf = self.shown_stack(site)[-1]
                name = leaf.function
                if leaf.filename:
                    name = f"{leaf.function} ({leaf.filename.rsplit('/', 1)[-1]}:{leaf.line})"
            objs, size = site.live(self.sampling.period)
            a_objs, a_size = site.allocated(self.sampling.period)
            acc = by_func.setdefault(name, [0.0] * 6)
            acc[0] += size
            acc[1] += objs
            acc[2] += a_size
            acc[3] += a_objs
            acc[4] += site.live_variance(self.sampling.period)
            acc[5] += site.alloc_variance(self.sampling.period)
        key = 0 if order == "inuse_space" else 2
        ranked = sorted(
            ((name, v) for name, v in by_func.items() if round(v[key])),
            key=lambda kv: (-kv[1][key], kv[0]),
        )
        return [
            TopRow(name, round(v[0]), round(v[1]), round(v[2]), round(v[3]), v[4], v[5])
            for name, v in ranked[:n]
        ]

    def top(self, n: int = 10) -> list[tuple[str, int, int]]:
        """(function, live bytes, live objects) by function at the leaf, largest first."""
        return [(r.function, r.inuse_bytes, r.inuse_objects) for r in self.top_sites(n)]
