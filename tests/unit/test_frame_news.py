"""A SAMPLES frame carries only what changed since the last one (the agent's ``_news``):
the totals and facts that moved, and no empty parts. heapspy folds them in key by key,
so what it holds after every frame is what full frames gave, while an idle worker's
frame is a few bytes instead of a kilobyte to parse and check."""

from __future__ import annotations

import copy
from typing import Any

from heapspy_agent import protocol, schema
from heapspy_agent.agent import Agent

from heapspy.aggregate import Aggregator
from heapspy.sampling import Sampling


def _collection(seq: int, allocations: int, gc0: int) -> dict[str, Any]:
    """One interval's collection as the sampled collector and the agent make it."""
    return {
        "stacks": [],
        "inuse": {},
        "alloc": {},
        "est": {},
        "var": {},
        "evicted": [],
        "seq": seq,
        "totals": {
            "allocations": allocations,
            "allocated_bytes": allocations * 64,
            "size_classes": [[3, allocations]],
            "numpy": "NumPy is not imported",
            "rate": 524288,
        },
        "facts": {"gc_counts": [gc0, 0, 0], "threads": 2, "thread_names": ["MainThread"]},
    }


def _fold(bodies: list[dict[str, Any]]) -> Aggregator:
    agg = Aggregator(Sampling("sampled", 524288))
    for body in bodies:
        data = protocol.encode(protocol.SAMPLES, body)
        agg.apply(schema.check(protocol.SAMPLES, protocol.decode(data[protocol.HEADER.size :])))
    return agg


def test_frames_carry_what_changed_and_fold_into_the_same_state(tmp_path: Any) -> None:
    agent = Agent(str(tmp_path), {})
    full = [_collection(1, 10, 5), _collection(2, 10, 5), _collection(3, 12, 7)]
    sent = [agent._news(copy.deepcopy(body)) for body in full]
    assert sent[0] == {k: v for k, v in full[0].items() if v}  # the first: everything
    assert sent[1] == {"seq": 2}  # an idle interval: its number only
    assert sent[2] == {
        "seq": 3,
        "totals": {"allocations": 12, "allocated_bytes": 768, "size_classes": [[3, 12]]},
        "facts": {"gc_counts": [7, 0, 0]},
    }
    shrunk, whole = _fold(sent), _fold(full)
    assert (shrunk.totals, shrunk.facts, shrunk.intervals) == (
        whole.totals,
        whole.facts,
        whole.intervals,
    )
    assert len(protocol.encode(protocol.SAMPLES, sent[1])) < 20
