"""The aggregator's folding, fed hand-made SAMPLES bodies: no process, milliseconds.

Bodies go through the wire schema's check first, as the session does, so they have the
shape the aggregator really receives (site ids as the JSON object keys they arrive as).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from heapspy_agent import protocol, schema

from heapspy import aggregate
from heapspy.aggregate import Aggregator, ProcessFacts
from heapspy.live_types import apply_types
from heapspy.model import Frame
from heapspy.sampling import Sampling
from heapspy.scaling import sampling_variance, scale
from heapspy.symbolize import Symbolizer

RATE = 512 * 1024
MAIN = ["main", "/app/app.py", 40]
SERVE = ["serve", "/app/app.py", 30]
LEAK = ["leak_cache", "/app/cache.py", 12]
PARSE = ["parse", "/app/parse.py", 7]


def samples(**body: Any) -> dict[str, Any]:
    """A SAMPLES body as the session hands it on: checked by the wire schema."""
    return schema.check(protocol.SAMPLES, {"seq": 0, **body})


def stack(sid: int, *frames: list[Any]) -> dict[str, Any]:
    return {"id": sid, "frames": [list(f) for f in frames]}


def sampled() -> Aggregator:
    return Aggregator(Sampling("sampled", RATE))


def test_stacks_are_sent_once_and_numbers_are_absolute() -> None:
    agg = sampled()
    agg.apply(samples(stacks=[stack(1, MAIN, LEAK), stack(2, MAIN, PARSE)],
                      inuse={"1": [2, 2048], "2": [1, 100]}, alloc={"1": [3, 3072]}))  # fmt: skip
    agg.apply(samples(inuse={"1": [5, 5120]}))  # only what changed; site 2 keeps its numbers
    assert agg.intervals == 2
    assert [f.function for f in agg.sites[1].stack] == ["main", "leak_cache"]
    assert agg.sites[1].stack[-1] == Frame("leak_cache", "/app/cache.py", 12)
    assert (agg.sites[1].inuse_objects, agg.sites[1].inuse_bytes) == (5, 5120)
    assert (agg.sites[1].alloc_objects, agg.sites[1].alloc_bytes) == (3, 3072)
    assert (agg.sites[2].inuse_objects, agg.sites[2].inuse_bytes) == (1, 100)
    # one Frame object per distinct frame, shared by the stacks that have it
    assert agg.sites[1].stack[0] is agg.sites[2].stack[0]


def test_a_repeated_stack_id_changes_nothing() -> None:
    agg = sampled()
    agg.apply(samples(stacks=[stack(1, MAIN, LEAK)], inuse={"1": [1, 64]}))
    agg.apply(samples(stacks=[stack(1, MAIN, PARSE)]))
    assert agg.sites[1].stack[-1].function == "leak_cache"
    assert agg.dropped_stacks == 0


def test_numbers_for_unknown_sites_are_ignored() -> None:
    agg = sampled()
    agg.apply(samples(inuse={"7": [1, 64]}, alloc={"7": [1, 64]}, est={"7": [1, 2, 3, 4]}))
    assert agg.sites == {} and agg.heap_estimate() == 0 and agg.intervals == 1


def test_sampled_heap_is_upscaled_and_the_agents_estimate_wins() -> None:
    agg = sampled()
    agg.apply(samples(stacks=[stack(1, MAIN, LEAK), stack(2, MAIN, PARSE)],
                      inuse={"1": [2, 2048], "2": [1, 1 << 20]},
                      est={"2": [10.0, 4e6, 5.0, 3e6]}))  # fmt: skip
    upscaled = scale(2, 2048, RATE)[1]
    assert upscaled > 2048  # small samples stand for many more bytes
    assert agg.heap_estimate() == int(upscaled + 3e6)
    assert agg.sampling.estimates


def test_exact_mode_counts_growth_seen_live_as_allocations() -> None:
    agg = Aggregator(Sampling("exact", 1))
    agg.apply(samples(stacks=[stack(1, MAIN, LEAK)], inuse={"1": [2, 200]}))
    agg.apply(samples(inuse={"1": [1, 100]}))  # freed: allocations never go down
    agg.apply(samples(inuse={"1": [3, 300]}))
    site = agg.sites[1]
    assert (site.alloc_objects, site.alloc_bytes) == (4, 400)
    assert agg.heap_estimate() == 300  # exact: not upscaled
    assert not agg.sampling.estimates


def test_growth_streaks() -> None:
    agg = sampled()
    agg.apply(samples(stacks=[stack(1, MAIN, LEAK), stack(2, MAIN, PARSE)],
                      inuse={"1": [1, 100], "2": [1, 100]}))  # fmt: skip
    agg.apply(samples(inuse={"1": [2, 200], "2": [2, 200]}))
    agg.apply(samples(inuse={"1": [3, 300], "2": [2, 200]}))  # 2 stops growing
    assert agg.growing(4) == [1, 1, 1, 0]  # site 1 grew in each of the last three
    longest = agg.longest_growing()
    assert longest is not None and longest[0][-1].function == "leak_cache" and longest[1] == 3
    agg.apply(samples(inuse={"1": [3, 300]}))
    assert agg.growing(2) == [0, 0] and agg.longest_growing() is None


def test_top_sites_sum_by_leaf_and_order() -> None:
    agg = sampled()
    agg.apply(samples(stacks=[stack(1, MAIN, LEAK), stack(2, SERVE, LEAK),
                              stack(3, MAIN, PARSE), stack(4, MAIN, SERVE)],
                      inuse={"1": [1, 1000], "2": [1, 3000], "3": [1, 2000], "4": [0, 0]},
                      alloc={"1": [1, 1000], "2": [1, 3000], "3": [9, 90000]},
                      est={str(i): [1.0, a, 1.0, b] for i, a, b in
                           ((1, 1000, 1000), (2, 3000, 3000), (3, 90000, 2000))}))  # fmt: skip
    live = agg.top_sites(10)
    assert [(r.function, r.inuse_bytes) for r in live] == [
        ("leak_cache (cache.py:12)", 4000),  # two stacks, one leaf
        ("parse (parse.py:7)", 2000),
    ]  # serve allocates nothing: left out
    assert live[0].inuse_bytes_var == pytest.approx(
        sampling_variance(1.0, 1000, RATE)[1] + sampling_variance(1.0, 3000, RATE)[1]
    )
    allocated = agg.top_sites(1, order="alloc_space")
    assert [(r.function, r.alloc_bytes) for r in allocated] == [("parse (parse.py:7)", 90000)]
    assert agg.top(1) == [("leak_cache (cache.py:12)", 4000, 2)]


def test_profile_splits_exact_and_sampled_sites_and_keeps_the_rate() -> None:
    agg = sampled()
    agg.apply(samples(stacks=[stack(1, MAIN, LEAK), stack(2, MAIN, PARSE)],
                      inuse={"1": [2, 2048], "2": [0, 0]}))  # fmt: skip
    profile = agg.profile(comments=("why",))
    assert profile.rate == RATE and profile.exact == ()
    assert [s[-1].function for s, _ in profile.sampled] == ["leak_cache"]  # empty site left out
    assert profile.comments == ("why",)
    exact = Aggregator(Sampling("exact", RATE))
    exact.apply(samples(stacks=[stack(1, MAIN, LEAK)], inuse={"1": [2, 2048]}))
    profile = exact.profile()
    assert profile.rate == 1 and profile.sampled == () and len(profile.exact) == 1
    assert profile.comments and profile.comments[0].startswith("exact mode (tracemalloc)")


def test_totals_facts_and_series() -> None:
    agg = sampled()
    agg.history = 2
    agg.apply(samples(totals={"allocated_bytes": 10, "allocations": 2, "freed_bytes": 4,
                              "frees": 1, "size_classes": [[64, 2]]}))  # fmt: skip
    totals = agg.alloc_totals()
    assert totals is not None and totals.allocated_bytes == 10 and totals.size_classes == ((64, 2),)
    for rss in (1, 2, 3):
        agg.record(ProcessFacts(rss=rss))
    assert [p.rss for p in agg.series] == [2, 3]  # bounded


def test_limits_drop_and_count_stacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aggregate, "MAX_SITES", 2)
    agg = sampled()
    agg.apply(samples(stacks=[stack(i, MAIN, [f"f{i}", "/app/x.py", i]) for i in range(1, 5)]))
    assert sorted(agg.sites) == [1, 2] and agg.dropped_stacks == 2
    monkeypatch.setattr(aggregate, "MAX_SITES", 10)
    monkeypatch.setattr(aggregate, "MAX_DISTINCT_FRAMES", 3)  # MAIN, f1, f2 already
    agg.apply(samples(stacks=[stack(9, MAIN)]))  # known frames only: still fits
    agg.apply(samples(stacks=[stack(10, MAIN, PARSE)]))  # a new frame: over the limit
    assert 10 not in agg.sites and 9 in agg.sites and agg.dropped_stacks == 3


def test_frames_without_names_are_named_from_the_source(tmp_path: Path) -> None:
    """Exact mode sends no function names; before 3.11 only co_name: the source gives
    the qualified name, used when it ends in the name sent."""
    source = tmp_path / "shipper.py"
    source.write_text("class Shipper:\n    def buffer_line(self):\n        return []\n")
    agg = Aggregator(Sampling("exact", 1), symbolizer=Symbolizer(), qualify=True)
    agg.apply(samples(stacks=[stack(1, ["", str(source), 3]),
                              stack(2, ["buffer_line", str(source), 3]),
                              stack(3, ["other", str(source), 3])]))  # fmt: skip
    names = [agg.sites[i].stack[0].function for i in (1, 2, 3)]
    assert names == ["Shipper.buffer_line", "Shipper.buffer_line", "other"]


def types_reply(body: dict[str, Any]) -> dict[str, Any]:
    """A `types` REPLY as the session hands it on: checked by the wire schema."""
    return schema.check(protocol.REPLY, {"ok": True, **body})


def test_types_split_inuse_without_changing_a_stacks_totals() -> None:
    agg = sampled()
    est = {"1": [30.0, 30000.0, 20.0, 20000.0], "2": [2.0, 200.0, 1.0, 100.0]}
    agg.apply(samples(stacks=[stack(1, MAIN, LEAK), stack(2, MAIN, PARSE)],
                      inuse={"1": [10, 10000], "2": [1, 100]},
                      alloc={"1": [15, 15000], "2": [2, 200]}, est=est))  # fmt: skip
    # a moment later: stack 1 holds 12 samples (dicts, bytes, a buffer); stack 2 none
    reply = types_reply({"complete": True, "types": {"1": [
        ["dict", 6, 1000, 60.0, 10000.0], ["bytes", 4, 9000, 5.0, 11000.0],
        ["", 2, 2000, 3.0, 3000.0]]}})  # fmt: skip
    apply_types(agg.sites, reply["types"], reply["complete"])
    site = agg.sites[1]
    assert (site.inuse_objects, site.inuse_bytes) == (12, 12000)  # the classified samples
    assert site.estimate == (30.0, 30000.0, 68.0, 24000.0)
    assert agg.sites[2].inuse_objects == 0  # complete: stack 2 holds nothing now
    profile = agg.profile()
    parts = [
        (dict(c.labels).get("type"), c)
        for s, c in profile.sampled
        if s[-1].function == "leak_cache"
    ]
    assert sorted(t or "" for t, _ in parts) == ["", "bytes", "dict"]
    assert sum(c.estimate[3] for _, c in parts if c.estimate) == pytest.approx(24000.0)
    assert sum(c.alloc_objects for _, c in parts) == 15  # allocations: on the untyped part
    assert sum(c.inuse_bytes for _, c in parts) == 12000
    rows = {r.function: r.inuse_bytes for r in agg.top_sites(10, by="type")}
    assert rows == {"bytes": 11000, "dict": 10000, "(none)": 3000}
    # the site changes: its split is dropped, its totals come from the new numbers
    agg.apply(samples(inuse={"1": [13, 13000]},
                      est={"1": [31.0, 31000.0, 70.0, 25000.0]}))  # fmt: skip
    assert agg.sites[1].types is None
    leak = [c for s, c in agg.profile().sampled if s[-1].function == "leak_cache"]
    assert [(dict(c.labels).get("type"), c.inuse_bytes) for c in leak] == [(None, 13000)]


def test_an_evicted_stack_keeps_its_figures_and_takes_them_up_again() -> None:
    agg = sampled()
    # stack 1 allocates and frees everything; the agent then evicts it and, later, hands
    # its id to another stack; the same frames come back under id 3
    agg.apply(samples(stacks=[stack(1, MAIN, PARSE), stack(2, MAIN, LEAK)],
                      inuse={"1": [0, 0], "2": [1, 64]}, alloc={"1": [4, 400], "2": [1, 64]},
                      est={"1": [40.0, 4000.0, 0.0, 0.0]}, var={"1": [9.0, 90.0, 0.0, 0.0]},
                      evicted=[1]))  # fmt: skip
    assert 1 not in agg.sites and len(agg.retired) == 1
    agg.apply(samples(stacks=[stack(1, SERVE)], alloc={"1": [1, 10]}))  # a new stack, id 1
    assert agg.sites[1].stack[-1].function == "serve" and agg.sites[1].alloc_objects == 1
    agg.apply(samples(stacks=[stack(3, MAIN, PARSE)], inuse={"3": [1, 100]},
                      alloc={"3": [1, 100]}, est={"3": [10.0, 1000.0, 10.0, 1000.0]},
                      var={"3": [1.0, 10.0, 1.0, 10.0]}))  # fmt: skip
    assert not agg.retired
    site = agg.sites[3]
    assert (site.alloc_objects, site.alloc_bytes) == (5, 500)  # cumulative since attach
    assert site.estimate == (50.0, 5000.0, 10.0, 1000.0)
    assert site.variance == (10.0, 100.0, 1.0, 10.0)
    # evicted again with the same frames as another retired site: one site in the dump
    agg.apply(samples(inuse={"3": [0, 0]}, evicted=[3]))
    (parse,) = [c for s, c in agg.profile().sampled if s[-1].function == "parse"]
    assert (parse.alloc_objects, parse.inuse_objects) == (5, 0)


def test_the_overflow_stack_says_how_many_samples_it_holds() -> None:
    agg = sampled()
    agg.apply(samples(stacks=[stack(0, [schema.OVERFLOW_FUNCTION, "", 0])],
                      inuse={"0": [3, 300]}, alloc={"0": [3, 300]},
                      totals={"overflow_samples": 3}))  # fmt: skip
    ((shown, _),) = agg.profile().sampled
    assert shown[-1].function == "[stack table full: 3 samples]"
    assert agg.top_sites(1)[0].function == "[stack table full: 3 samples]"
