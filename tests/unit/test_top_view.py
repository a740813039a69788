"""``heapspy top``'s view and screen, from a hand-fed aggregator: no process, milliseconds."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from heapspy_agent import protocol, schema

from heapspy.aggregate import Aggregator, ProcessFacts
from heapspy.errors import UsageError
from heapspy.model import TopRow
from heapspy.reporters.top import top_screen
from heapspy.sampling import Sampling
from heapspy.top import TopView, check_order, top_view

RATE = 64 * 1024
LEAK = ["leak_cache", "/app/cache.py", 12]
PARSE = ["parse", "/app/parse.py", 7]
MAIN = ["main", "/app/app.py", 40]


def fed(mode: str, rate: int, *inuse: tuple[int, int]) -> Aggregator:
    """An aggregator that received one SAMPLES body: site i+1 ends in LEAK, PARSE, ..."""
    agg = Aggregator(Sampling(mode, rate))
    leaves = [LEAK, PARSE]
    body: dict[str, Any] = {
        "seq": 0,
        "stacks": [{"id": i + 1, "frames": [MAIN, leaves[i]]} for i in range(len(inuse))],
        "inuse": {str(i + 1): list(pair) for i, pair in enumerate(inuse)},
        "alloc": {str(i + 1): list(pair) for i, pair in enumerate(inuse)},
    }
    agg.apply(schema.check(protocol.SAMPLES, body))
    return agg


def test_view_of_an_exact_session() -> None:
    agg = fed("exact", RATE, (3, 3000), (1, 5000))
    agg.record(ProcessFacts(rss=50 << 20))
    view = top_view(agg, 10)
    assert (view.sampling, view.intervals, view.heap, view.rss) == (
        Sampling("exact", 1),
        1,
        8000,
        50 << 20,  # exact: the rate is 1 whatever was asked
    )
    assert [(r.function, r.inuse_bytes, r.inuse_objects) for r in view.rows] == [
        ("parse (parse.py:7)", 5000, 1),
        ("leak_cache (cache.py:12)", 3000, 3),
    ]
    assert not view.sampled
    assert top_view(agg, 1).rows == view.rows[:1]


def test_view_of_a_sampled_session_is_an_estimate_with_errors() -> None:
    agg = fed("sampled", RATE, (2, 2048))
    view = top_view(agg, 10)
    assert view.sampled and view.sampling.rate == RATE and view.rss is None  # no point yet
    (row,) = view.rows
    assert row.inuse_bytes > 2048 and row.inuse_bytes_var is not None and row.inuse_bytes_var > 0
    # rate 0: totals only, nothing to estimate
    assert not replace(view, sampling=Sampling.of_rate(0)).sampled


def test_view_survives_the_control_socket() -> None:
    view = top_view(fed("sampled", RATE, (2, 2048), (1, 100)), 10)
    assert TopView.from_json(json.loads(json.dumps(view.to_json()))) == view


def test_view_from_an_older_session_without_variances() -> None:
    body = top_view(fed("sampled", RATE, (2, 2048)), 10).to_json()
    for row in body["rows"]:
        del row["inuse_bytes_var"], row["alloc_bytes_var"]
    (row,) = TopView.from_json(body).rows
    assert row.inuse_bytes_var is None and row.alloc_bytes_var is None


def test_check_order() -> None:
    assert check_order("alloc_space") == "alloc_space"
    with pytest.raises(UsageError, match="inuse_space or alloc_space"):
        check_order("inuse")


def _view(heap: int, *rows: TopRow, mode: str = "exact") -> TopView:
    sampling = Sampling(mode, RATE if mode == "sampled" else 1)
    return TopView(time=0.0, sampling=sampling, intervals=2, heap=heap, rss=None, rows=rows)


def test_screen_shows_growth_since_start_and_since_last() -> None:
    first = _view(1024, TopRow("leak (a.py:1)", 1024, 1, 1024, 1))
    prev = _view(3072, TopRow("leak (a.py:1)", 3072, 3, 3072, 3))
    now = _view(6144, TopRow("leak (a.py:1)", 4096, 4, 4096, 4),
                TopRow("parse (b.py:2)", 2048, 1, 2048, 1))  # fmt: skip
    screen = top_screen(42, now, first, prev, "inuse_space", 10)
    lines = screen.splitlines()
    assert lines[0].startswith("heapspy top  pid 42  ") and "exact (tracemalloc)" in lines[0]
    assert "live heap 6.0 KiB (+5.0 KiB since start, +3.0 KiB since last)" in lines[1], screen
    leak = next(line for line in lines if line.endswith("leak (a.py:1)"))
    assert leak.split()[:5] == ["4.0", "KiB", "+3.0", "KiB", "+1.0"], leak
    parse = next(line for line in lines if line.endswith("parse (b.py:2)"))
    assert parse.split()[2:4] == ["new", "new"], parse  # not in the earlier views
    assert "parse" not in top_screen(42, now, first, prev, "inuse_space", 1)


def test_screen_before_anything_is_recorded() -> None:
    empty = _view(0, mode="sampled")
    assert "(nothing recorded yet)" in top_screen(1, empty, empty, None, "inuse_space", 10)
