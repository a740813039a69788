"""The heap census alone: its wire messages' bounds, the agent's own sizes and bitmap,
heapspy's collector and the pprof profile it writes (retention paths, root first)."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from heapspy_agent import protocol, schema
from heapspy_agent.census import Bitmap, Census
from heapspy_agent.protocol import ProtocolError

from heapspy.census import MAX_SITES, CensusCollector, census_profile
from heapspy.pprof import decode_profile


def _last(sites: list[Any], **extra: Any) -> dict[str, Any]:
    body = {
        "sites": sites,
        "done": True,
        "partial": False,
        "objects": 3,
        "bytes": 300,
        "elapsed": 1.5,
        "cpu": 0.2,
        "longest_slice": 0.01,
        "phase": "unowned",
        "bookkeeping": 8192,
        "folded_paths": 0,
        "notes": [],
    }
    body.update(extra)
    return body


def test_a_census_frame_within_its_bounds_is_accepted_and_beyond_them_refused() -> None:
    good = _last([[["app.CACHE", "dict", "str"], 2, 200], [["app.X", "list"], 1, 100]])
    assert schema.check(protocol.CENSUS, good)["sites"][0][0] == ["app.CACHE", "dict", "str"]
    too_deep = _last([[["r"] + ["dict"] * schema.MAX_CENSUS_DEPTH, 1, 1]])
    with pytest.raises(ProtocolError, match="items"):
        schema.check(protocol.CENSUS, too_deep)
    too_long = _last([[["x" * (schema.MAX_CENSUS_NAME + 1)], 1, 1]])
    with pytest.raises(ProtocolError, match="characters"):
        schema.check(protocol.CENSUS, too_long)
    too_many = _last([[["r"], 1, 1]] * (schema.MAX_CENSUS_SITES_PER_FRAME + 1))
    with pytest.raises(ProtocolError, match="items"):
        schema.check(protocol.CENSUS, too_many)
    with pytest.raises(ProtocolError, match="integer"):
        schema.check(protocol.CENSUS, _last([[["r"], "1", 1]]))
    with pytest.raises(ProtocolError, match="missing"):
        schema.check(protocol.CENSUS, {"done": True})


def test_the_collector_adds_frames_until_done_and_bounds_what_it_keeps() -> None:
    collector = CensusCollector(pid=42)
    first = {"sites": [[["a", "dict"], 1, 10]] * 2, "done": False}
    assert collector.add(schema.check(protocol.CENSUS, first)) is None
    result = collector.add(schema.check(protocol.CENSUS, _last([[["b", "str"], 1, 5]])))
    assert result is not None and not result.partial
    assert {p: (o, b) for p, o, b in result.sites} == {
        ("a", "dict"): (2, 20),
        ("b", "str"): (1, 5),
    }
    assert result.by_root()[0] == ("a", 2, 20) and result.by_type()[0] == ("dict", 2, 20)

    flood = CensusCollector(pid=1)
    for start in range(0, MAX_SITES + 10, 1000):
        flood.add({"sites": [[[f"r{i}"], 1, 1] for i in range(start, start + 1000)]})
    done = flood.add(_last([]))
    assert done is not None and len(done.sites) == MAX_SITES and done.dropped_sites == 1000


def test_the_profile_has_objects_and_space_with_retention_paths_root_first() -> None:
    collector = CensusCollector(pid=7, started_ns=1_000)
    collector.stopped_why = "interrupted"
    result = collector.add(
        _last(
            [[["app.CACHE", "dict", "str"], 2, 200], [["app.CACHE", "dict"], 1, 100]],
            partial=True,
        )
    )
    assert result is not None
    profile = decode_profile(census_profile(result))
    assert profile.sample_types == (("objects", "count"), ("space", "bytes"))
    assert profile.default_sample_type == "space"
    stacks = {tuple(f.function for f in s.stack): s.values for s in profile.samples}
    assert stacks == {("app.CACHE", "dict", "str"): (2, 200), ("app.CACHE", "dict"): (1, 100)}
    assert profile.comments[-1] == "partial census: interrupted"


def test_the_bitmap_marks_each_address_once() -> None:
    seen = Bitmap()
    assert seen.add(0x7F0000001230) and not seen.add(0x7F0000001230)
    assert 0x7F0000001230 in seen and 0x7F0000001240 not in seen
    assert seen.add(0x5500_0000_0010)  # another MiB: a chunk of its own
    assert len(seen.chunks) == 2 and seen.memory() < 20_000


class _Slots:
    __slots__ = ("a", "b", "c")

    def __sizeof__(self) -> int:
        raise AssertionError("a Python __sizeof__ must not run")


class _SubDict(dict):  # type: ignore[type-arg]
    def __sizeof__(self) -> int:
        raise AssertionError("a Python __sizeof__ must not run")


class _PlainSlots:
    __slots__ = ("a", "b", "c")


class _PlainSubDict(dict):  # type: ignore[type-arg]
    pass


def test_sizes_are_getsizeof_without_running_python_code() -> None:
    census = Census([], 0)
    for obj in ([1, 2, 3], {"a": 1}, "text", b"x" * 100, 3.5, (1, 2), 10**30):
        assert census.size(obj) == sys.getsizeof(obj), obj
    # what getsizeof says of the same layouts without a Python __sizeof__
    assert census.size(_Slots()) == sys.getsizeof(_PlainSlots())
    assert census.size(_SubDict(a=1)) == sys.getsizeof(_PlainSubDict(a=1))
    assert census.type_name(_Slots) == f"{__name__}._Slots" and census.type_name(dict) == "dict"


def test_big_containers_are_opened_a_chunk_at_a_time_with_the_same_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A dict or list beyond CHUNK is walked in pieces (no GIL held for one huge
    gc.get_referents): what its root holds is counted as when it is opened at once."""
    import threading
    import types

    import heapspy_agent.census as census_mod

    module = types.ModuleType("census_chunk_probe")
    module.BIG_DICT = {f"k{i}": [i] * 3 for i in range(3000)}  # type: ignore[attr-defined]
    module.BIG_LIST = [f"v{i}" * 2 for i in range(5000)]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "census_chunk_probe", module)

    def held(chunk: int) -> dict[tuple[str, ...], list[int]]:
        monkeypatch.setattr(census_mod, "CHUNK", chunk)
        census = Census([], threading.get_ident())
        while not census.step(1.0):
            pass
        return {p: v for p, v in census.sites.items() if p[0].startswith("census_chunk_probe.")}

    whole, chunked = held(10**9), held(100)
    assert chunked == whole
    assert whole[("census_chunk_probe.BIG_DICT", "dict", "list")][0] == 3000
    # its str keys too, which a dict's tp_traverse leaves out
    assert whole[("census_chunk_probe.BIG_DICT", "dict", "str")][0] == 3000
    assert whole[("census_chunk_probe.BIG_LIST", "list", "str")][0] == 5000
