"""Quiet intervals (agent/heapspy_agent/quiet.py) without a process: the agent's own
sending path fed a scripted stream of collections, folded by heapspy's Aggregator one
frame per collection and with the quiet ones held back and merged, gives the same state;
and what makes a held collection go out at once. The real thing runs in
tests/test_quiet_intervals.py."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
from heapspy_agent import protocol, schema
from heapspy_agent.agent import Agent
from heapspy_agent.quiet import QuietIntervals

from heapspy.aggregate import Aggregator
from heapspy.sampling import Sampling

RATE = 4096


def _stack(sid: int, func: str, line: int, label: int = 0) -> dict[str, Any]:
    return {"id": sid, "frames": [[func, "/app/a.py", line]], "labels": label}


def _totals(allocations: int, **extra: Any) -> dict[str, Any]:
    return {"allocations": allocations, "rate": RATE, "dropped_samples": 0, **extra}


# What the sampled collector returns at each collection (absolute figures: cumulative
# allocations, live as of then); the 1st, 4th and 7th have live changes or an eviction
# (or are asked for), the others only allocations that came and went.
SCRIPT: list[dict[str, Any]] = [
    {  # 1: site 1 holds a block
        "stacks": [_stack(1, "f", 1, label=1), _stack(2, "g", 2)],
        "labels": {"1": {"thread": "MainThread", "thread_id": 7}},
        "inuse": {"1": [1, 4096], "2": [0, 0]},
        "alloc": {"1": [1, 4096], "2": [1, 5000]},
        "est": {"1": [1.5, 6000.0, 1.5, 6000.0], "2": [1.2, 6000.0, 0.0, 0.0]},
        "var": {"1": [0.2, 1e6, 0.2, 1e6], "2": [0.1, 2e6, 0.0, 0.0]},
        "totals": _totals(10),
    },
    {  # 2: a new stack (and label set) whose sample was freed; site 2 churns
        "stacks": [_stack(3, "h", 3, label=2)],
        "labels": {"2": {"thread": "worker", "thread_id": 8}},
        "inuse": {"2": [0, 0], "3": [0, 0]},
        "alloc": {"2": [2, 10000], "3": [1, 100]},
        "est": {"2": [2.4, 12000.0, 0.0, 0.0], "3": [25.0, 2500.0, 0.0, 0.0]},
        "var": {"2": [0.2, 4e6, 0.0, 0.0], "3": [600.0, 6e6, 0.0, 0.0]},
        "totals": _totals(20),
    },
    {  # 3: site 3 churns
        "inuse": {"3": [0, 0]},
        "alloc": {"3": [2, 200]},
        "est": {"3": [50.0, 5000.0, 0.0, 0.0]},
        "var": {"3": [1200.0, 1.2e7, 0.0, 0.0]},
        "totals": _totals(30, native={"redirected": ["/lib/x.so"], "skipped": [], "more": 0}),
    },
    {  # 4: site 1 grows, stack 2 is evicted
        "inuse": {"1": [2, 8192]},
        "alloc": {"1": [2, 8192]},
        "est": {"1": [3.0, 12000.0, 3.0, 12000.0]},
        "var": {"1": [0.4, 2e6, 0.4, 2e6]},
        "evicted": [2],
        "totals": _totals(40),
    },
    {  # 5: id 2 comes back as another stack, its sample freed
        "stacks": [_stack(2, "k", 9)],
        "inuse": {"2": [0, 0]},
        "alloc": {"2": [1, 64]},
        "est": {"2": [64.0, 4096.0, 0.0, 0.0]},
        "var": {"2": [4000.0, 1.6e7, 0.0, 0.0]},
        "totals": _totals(50),
    },
    {  # 6: site 1 allocates and frees: its live estimate keeps a rounding residue
        "inuse": {"1": [2, 8192]},
        "alloc": {"1": [3, 12288]},
        "est": {"1": [4.5, 18000.0, 3.0 + 4e-16, 12000.000000000002]},
        "var": {"1": [0.6, 3e6, 0.4, 2e6]},
        "totals": _totals(60),
    },
    {"totals": _totals(70)},  # 7: asked for (a dump): sent with what was held
]
ASKED = {7}


def _exact(traced: int, **body: Any) -> dict[str, Any]:
    return {"totals": {"traced_bytes": traced, "rate": RATE, "dropped_samples": 0}, **body}


# Exact mode: tracemalloc's live figures, and the label samples the shim takes beside it
# (``labelled``, sent in frames of their own before the exact one); the 1st and 4th have
# live changes. Its traced bytes move by less than the label samples' rate meanwhile.
EXACT_SCRIPT: list[dict[str, Any]] = [
    _exact(
        1000,
        stacks=[_stack(1, "load", 1)],
        inuse={"1": [10, 1000]},
        labelled={
            "stacks": [_stack(5, "load", 1, label=1)],
            "labels": {"1": {"thread": "MainThread", "thread_id": 7}},
            "inuse": {"5": [1, 4096]},
            "alloc": {"5": [1, 4096]},
            "est": {"5": [1.5, 6000.0, 1.5, 6000.0]},
            "totals": {"rate": RATE},
        },
    ),
    _exact(
        1100,
        labelled={
            "stacks": [_stack(6, "parse", 2, label=2)],
            "labels": {"2": {"thread": "worker", "thread_id": 8}},
            "inuse": {"6": [0, 0]},
            "alloc": {"6": [1, 4096]},
            "est": {"6": [1.5, 6000.0, 0.0, 0.0]},
            "totals": {"rate": RATE},
        },
    ),
    _exact(
        1200,
        labelled={
            "inuse": {"6": [0, 0]},
            "alloc": {"6": [2, 8192]},
            "est": {"6": [3.0, 12000.0, 0.0, 0.0]},
            "totals": {"rate": RATE},
        },
    ),
    _exact(1300, inuse={"1": [11, 1100]}),
]


class _Script:
    """The collector's side, scripted (the agent's own code does the rest)."""

    def __init__(self, script: list[dict[str, Any]]) -> None:
        self.bodies = copy.deepcopy(script)

    def collect(self) -> dict[str, Any]:
        return self.bodies.pop(0)


def _run(
    idle_report: float, script: list[dict[str, Any]] = SCRIPT, mode: str = "sampled"
) -> tuple[Aggregator, int, list[Any]]:
    """The script through a real Agent's sending path into a real Aggregator, as the
    session folds frames in; the aggregator's state after each collection."""
    agent = Agent("/nonexistent", {})
    agent.collector = _Script(script)
    agent.quiet = QuietIntervals(idle_report, 1.0)
    agg = Aggregator(Sampling(mode, RATE if mode == "sampled" else 1))
    frames = 0

    def send(kind: int, body: dict[str, Any]) -> None:
        nonlocal frames
        data = protocol.encode(kind, body)
        checked = schema.check(kind, protocol.decode(data[protocol.HEADER.size :]))
        if kind == protocol.STACKS:
            if checked.get("labelled"):
                agg.add_labelled_stacks(checked["stacks"])
            else:
                agg.add_stacks(checked["stacks"])
        elif checked.get("labelled"):
            agg.apply_labelled(checked)
        else:
            frames += 1
            agg.apply(checked)

    agent._send = send  # type: ignore[method-assign]
    states = []
    for n in range(1, len(script) + 1):
        agent._send_samples(scheduled=n not in ASKED)
        # exact mode's label samples: their counts of collections and leak streaks are
        # not read (a labelled frame goes only with label samples that changed)
        part = _state(agg.labelled)[:5] if agg.labelled else None
        states.append(copy.deepcopy((_state(agg), part)))
    return agg, frames, states


def _state(agg: Aggregator) -> Any:
    def site(s: Any) -> Any:
        return (s.stack, s.inuse_objects, s.inuse_bytes, s.alloc_objects, s.alloc_bytes,
                s.estimate, s.variance, s.label_set, s.carried)  # fmt: skip

    # the test process's own gc and the agent's CPU: they differ run to run
    measured = ("collect_cpu", "gc_seconds", "gc_counts", "gc_collections", "gc_collected")
    return (
        {sid: site(s) for sid, s in agg.sites.items()},
        sorted(repr(site(s)) for s in agg.retired.values()),  # keyed by object ids
        agg.label_sets,
        agg.totals,
        {k: v for k, v in agg.facts.items() if k not in measured},
        agg.intervals,
        agg.streaks,
        agg.agent_dropped,
        agg.last_seq,
    )


def test_merged_frames_fold_into_the_state_of_frames_one_by_one() -> None:
    one_by_one, every, all_states = _run(0.0)
    merged, fewer, merged_states = _run(10.0)
    assert (every, fewer) == (7, 3)  # 1, 2-4, 5-7
    for n in (1, 4, 7):  # after each frame sent (the leak rule reads the streaks there)
        assert merged_states[n - 1] == all_states[n - 1], n
    assert merged.reports == 3 and merged.intervals == 7
    # the figures the script ends with, whichever way they came
    (back,) = [s for s in merged.sites.values() if s.stack[-1].function == "k"]
    assert (back.alloc_objects, back.alloc_bytes) == (1, 64)
    assert merged.totals["native"]["redirected"] == ["/lib/x.so"]


def test_exact_mode_and_its_label_samples_merge_alike() -> None:
    one_by_one, every, all_states = _run(0.0, EXACT_SCRIPT, "exact")
    merged, fewer, merged_states = _run(10.0, EXACT_SCRIPT, "exact")
    assert (every, fewer) == (4, 2)  # 1, 2-4
    for n in (1, 4):
        assert merged_states[n - 1] == all_states[n - 1], n
    assert merged.labelled is not None and len(merged.labelled.sites) == 2


def _quiet(**changes: Any) -> tuple[QuietIntervals, dict[str, Any], dict[str, Any]]:
    """A QuietIntervals that sent site 1 live, and the next collection's body: the same
    live figures, only allocations moved, unless ``changes`` say otherwise."""
    quiet = QuietIntervals(10.0, 1.0)
    facts = {"threads": 3, "thread_names": ["MainThread", "w"], "asyncio_tasks": [4]}
    first = {
        "inuse": {"1": [1, 4096]},
        "est": {"1": [1.5, 6000.0, 1.5, 6000.0]},
        "totals": _totals(10, traced_bytes=1 << 20),
        "facts": facts,
    }
    quiet.sending(first)
    sent = {"totals": first["totals"], "facts": facts}
    body = {
        "inuse": {"1": [1, 4096], "2": [0, 0]},
        "alloc": {"1": [1, 4096], "2": [5, 500]},
        "est": {"1": [1.5, 6000.0, 1.5, 6000.0 + 1e-12]},
        "totals": _totals(20, traced_bytes=(1 << 20) + RATE - 1),
        "facts": dict(facts),
    }
    for key, value in changes.items():
        part, _, name = key.partition("__")
        if name:
            body[part][name] = value
        else:
            body[part] = value
    return quiet, body, sent


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({}, id="allocations-only"),
        pytest.param({"labels": {"3": {"thread": "w", "thread_id": 9}}}, id="new-label-set"),
        pytest.param({"stacks": [_stack(2, "g", 2)]}, id="new-stack-nothing-live"),
        pytest.param({"facts__gc_counts": [700, 3, 1]}, id="gc-counts"),
    ],
)
def test_quiet_collections_are_held(changes: dict[str, Any]) -> None:
    quiet, body, sent = _quiet(**changes)
    assert quiet.hold(body, sent)
    assert quiet.flush() is body and quiet.flush() is None


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"inuse__1": [2, 8192]}, id="live-samples"),
        pytest.param({"inuse__1": [0, 0]}, id="freed"),
        pytest.param({"inuse__2": [1, 100]}, id="new-site-live"),
        pytest.param({"est__1": [1.5, 6000.0, 1.5, 6100.0]}, id="live-estimate"),
        pytest.param({"evicted": [4]}, id="evicted"),
        pytest.param({"totals__dropped_samples": 1}, id="dropped"),
        pytest.param({"totals__traced_bytes": (1 << 20) + RATE}, id="traced-bytes"),
        pytest.param({"facts__threads": 4}, id="threads"),
        pytest.param({"facts__thread_names": ["MainThread", "x"]}, id="thread-names"),
        pytest.param({"facts__asyncio_tasks": [5]}, id="tasks"),
        pytest.param({"alloc": {str(i): [1, 1] for i in range(100_001)}}, id="too-big"),
        pytest.param({"labelled": {"inuse": {"9": [1, 64]}}}, id="label-samples-live"),
    ],
)
def test_what_goes_out_at_once(changes: dict[str, Any]) -> None:
    quiet, body, sent = _quiet(**changes)
    assert not quiet.hold(body, sent)
    assert quiet.flush() is None


def test_idle_report_bounds_the_wait_and_zero_never_holds() -> None:
    quiet, body, sent = _quiet()
    quiet.last_sent = time.monotonic() - 9.6  # the next interval would be past 10 s
    assert not quiet.hold(body, sent)
    off, body, sent = _quiet()
    off.idle_report = 0.0
    assert not off.hold(body, sent)
