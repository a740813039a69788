"""Labels from the wire to the readers, fed hand-made SAMPLES bodies: no process.

The same stack under two label sets is two sites, one pprof sample each (with string
labels), merged again where the agent named two sets alike; ``--by`` groups by a label
in the report, the live view and the flame graph; hostile label sets are refused by
the wire schema. The real thing runs in tests/test_labels.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from heapspy_agent import protocol, schema

from heapspy import aggregate
from heapspy.aggregate import Aggregator
from heapspy.errors import UsageError
from heapspy.label_shares import apportion
from heapspy.label_totals import by_label, labels_summary
from heapspy.limits import task_figures
from heapspy.model import NO_LABEL, label_value
from heapspy.pprof import decode_profile, encode_profile
from heapspy.reporters.report import ReportConfig, build_report
from heapspy.reporters.sites import Site, aggregate_labels, check_by, label_rooted
from heapspy.reporters.status import labels_lines
from heapspy.sampling import Sampling

MAIN = ["main", "/app/app.py", 40]
LEAK = ["leak_cache", "/app/cache.py", 12]
WORKER = {"thread": "worker-1", "thread_id": 4242}
FETCH = {"thread": "MainThread", "thread_id": 7, "task": "fetch", "coro": ["fetch", "/app/a.py", 3]}


def samples(**body: Any) -> dict[str, Any]:
    return schema.check(protocol.SAMPLES, {"seq": 0, **body})


def labelled() -> Aggregator:
    """One stack (main -> leak_cache) under three label sets: a worker thread, a task,
    and a second set the agent named like the first (another tid's record, same names)."""
    agg = Aggregator(Sampling("sampled", 2))
    agg.apply(
        samples(
            labels={"1": WORKER, "2": FETCH, "3": dict(WORKER)},
            stacks=[
                {"id": 1, "frames": [MAIN, LEAK], "labels": 1},
                {"id": 2, "frames": [MAIN, LEAK], "labels": 2},
                {"id": 3, "frames": [MAIN, LEAK], "labels": 3},
            ],
            inuse={"1": [1, 1000], "2": [1, 300], "3": [1, 500]},
            alloc={"1": [1, 1000], "2": [1, 300], "3": [1, 500]},
            est={"1": [1, 1000, 1, 1000], "2": [1, 300, 1, 300], "3": [1, 500, 1, 500]},
        )
    )
    return agg


def test_label_sets_split_sites_and_the_dump_merges_alike_names(tmp_path: Path) -> None:
    agg = labelled()
    assert label_value(agg.labels_of(agg.sites[2]), "coro") == "fetch"
    assert label_value(agg.labels_of(agg.sites[1]), "thread_id") == "4242"
    live = {value: totals.live_bytes for value, totals in by_label(agg, "thread").items()}
    assert live == {"worker-1": 1500, "MainThread": 300}
    assert [r.function for r in agg.top_sites(5, by="task")] == [NO_LABEL, "fetch"]
    summary = labels_summary(agg)
    assert summary["thread"][0] == ["worker-1", 1500, 1500]
    assert summary["task"] == [["fetch", 300, 300]]

    profile = decode_profile(encode_profile(agg.profile()))
    by_labels = {s.labels: s.values[3] for s in profile.samples}
    assert by_labels == {  # sets 1 and 3 carry the same names: one sample
        (("thread", "worker-1"), ("thread_id", "4242")): 1500,
        (
            ("coro", "fetch"),
            ("task", "fetch"),
            ("thread", "MainThread"),
            ("thread_id", "7"),
        ): 300,
    }
    dump = tmp_path / "heap.pb.gz"
    dump.write_bytes(encode_profile(agg.profile()))
    rows = build_report(ReportConfig(dump=dump, by="coro")).top
    assert [(r.site.function, r.flat) for r in rows] == [(NO_LABEL, 1500), ("fetch", 300)]
    assert aggregate_labels(profile, 3, "thread")[Site("worker-1", "")] == (1500, 1500)
    roots = {s.stack[0].function for s in label_rooted(profile, "task").samples}
    assert roots == {"task: fetch", f"task: {NO_LABEL}"}


def test_unknown_keys_and_hostile_label_sets_are_refused() -> None:
    with pytest.raises(UsageError, match="Unknown label 'colour'"):
        check_by("colour")
    assert check_by("") == "" and check_by("task") == "task"
    for bad in (
        {"labels": {"x": WORKER}},  # not an id
        {"labels": {"1": {"thread": 5}}},  # not a string
        {"labels": {"1": {"thread": "t" * 201}}},  # too long
        {"labels": {"1": {"coro": ["f", "/a.py"]}}},  # not a frame
        {"stacks": [{"id": 1, "frames": [MAIN], "labels": 1 << 20}]},  # beyond the table
    ):
        with pytest.raises(protocol.ProtocolError):
            samples(**bad)
    agg = Aggregator(Sampling("sampled", 2))  # unknown keys of a set are dropped
    agg.apply(samples(labels={"1": {"thread": "t", "colour": "red"}}))
    assert agg.label_sets == {1: (("thread", "t"),)}


def test_status_lines_show_the_top_threads_and_tasks() -> None:
    summary = labels_summary(labelled(), 3)
    summary["thread_alloc"] = [[4242, 3 << 20, "worker-1"], [7, 1024, "MainThread"], "junk"]
    summary["agent_alloc"] = 54 << 20
    assert labels_lines(summary) == [
        "allocated by thread: worker-1 3.0 MiB, MainThread 1.0 KiB",
        "allocated by heapspy's agent: 54.0 MiB (its census and reports, not the target's"
        " work; not in the threads above)",
        "live by task: fetch 300 B",
        "live by coro: fetch 300 B",
    ]
    assert labels_lines({"task": [["\x1b[2J", 1, 5]]}) == ["live by task: \\x1b[2J 5 B"]
    assert labels_lines(None) == []


def test_the_agent_renders_only_the_name_objects_a_task_can_hold() -> None:
    """The shim hands over the object in a C Task's name slot: a str, or 3.13+'s int for
    a default name nobody asked for; anything else is not rendered (no target code runs)."""
    from heapspy_agent.labels import MAX_NAME, task_name

    class Loud(str):
        def __str__(self) -> str:
            raise AssertionError("target code ran")

    assert task_name("fetch-user") == "fetch-user"
    assert task_name(17) == "Task-17"
    assert task_name("x" * 1000) == "x" * MAX_NAME
    assert task_name(Loud("evil")) == "" and task_name(b"bytes") == "" and task_name(True) == ""


def test_the_task_probe_finds_its_offsets_on_this_interpreter() -> None:
    """The offsets the shim follows from Handle._run to a C Task's name, measured on
    objects of the agent's own; the real samples run in tests/test_labels.py."""
    import asyncio
    import sys

    from heapspy_agent.labels import task_probe

    assert "asyncio.events" in sys.modules and asyncio.Task is not None
    probe = task_probe()
    assert probe is not None
    (f_frame, local0, callback, name, ascii_data), handle, task = probe
    assert ascii_data == sys.getsizeof("") - 1
    assert handle is asyncio.events.Handle and task is sys.modules["_asyncio"].Task
    assert f_frame == (24 if sys.version_info >= (3, 11) else -1)
    assert local0 > 0 and callback >= 16 and name >= 16
    assert {local0 % 8, callback % 8, name % 8} == {0}


def test_the_wakeup_probe_measures_a_task_of_its_own() -> None:
    """The wakeup callback of a C Task's steps after a real await (3.8/3.9: its own
    type; 3.10+: a builtin method told by its definition), measured on a task the agent
    steps by hand on a loop of its own; refused on a thread that runs a loop."""
    import asyncio
    import ctypes
    import sys

    from heapspy_agent.labels import wakeup_probe

    task_cls = sys.modules["_asyncio"].Task
    probe = wakeup_probe(task_cls)
    assert probe is not None
    wakeup, task, ml_off, ml = probe
    if sys.version_info < (3, 10):
        assert wakeup.__name__ == "TaskWakeupMethWrapper" and (task, ml_off, ml) == (16, -1, 0)
    else:
        assert wakeup is type(len) and (task, ml_off) == (24, 16)
        assert ctypes.c_char_p.from_address(ml).value == b"task_wakeup"

    async def inside() -> object:
        return wakeup_probe(task_cls)

    assert asyncio.run(inside()) is None
    assert wakeup_probe(task_cls) == probe  # the loop is left unset


def test_the_task_probe_runs_no_code_of_a_replaced_handle(monkeypatch: pytest.MonkeyPatch) -> None:
    """A target that replaced asyncio.events.Handle (a property for _callback, a
    metaclass) gets no sample-time names, and none of its code runs."""
    import sys
    import types

    from heapspy_agent.labels import task_probe

    ran: list[str] = []

    class Meta(type):
        pass

    class Handle:
        @property
        def _callback(self) -> None:
            ran.append("get")

        @_callback.setter
        def _callback(self, value: object) -> None:
            ran.append("set")

    for cls in (Handle, Meta("Handle", (), {"__slots__": ("_callback",)})):
        fake = types.ModuleType("asyncio.events")
        fake.Handle = cls  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "asyncio.events", fake)
        assert task_probe() is None
    assert ran == []


def test_exact_stacks_split_by_the_label_samples_of_the_same_frames() -> None:
    """Exact mode: a labelled SAMPLES body (the shim's samples beside tracemalloc) splits
    each exact stack matched by file and line, in whole units that add up; a stack no
    sample saw keeps its exact labels only; the task limits read the samples."""
    agg = Aggregator(Sampling("exact", 1))
    labelled = samples(
        labelled=True,
        labels={"1": WORKER, "2": FETCH},
        stacks=[
            {"id": 1, "frames": [MAIN, LEAK], "labels": 1},
            {"id": 2, "frames": [MAIN, LEAK], "labels": 2},
        ],
        inuse={"1": [3, 3000], "2": [1, 1000]},
        alloc={"1": [3, 3000], "2": [1, 1000]},
        est={"1": [3, 3000, 3, 3000], "2": [1, 1000, 1, 1000]},
        totals={"rate": 65536},
    )
    agg.apply_labelled(labelled)
    exact_main, exact_leak = ["", MAIN[1], MAIN[2]], ["", LEAK[1], LEAK[2]]
    agg.apply(
        samples(
            labels={"1": {"coro": ["", "/app/a.py", 3]}},
            stacks=[
                {"id": 1, "frames": [exact_main, exact_leak], "labels": 1},
                {"id": 2, "frames": [exact_main], "labels": 0},
            ],
            inuse={"1": [7, 7001], "2": [1, 10]},
        )
    )
    assert agg.labelled is not None and agg.labelled.sampling.rate == 65536
    parts = [(dict(labels), site) for labels, site in agg.all_parts()]
    split = [(labels, site) for labels, site in parts if site.stack[-1].line == LEAK[2]]
    assert [(p.inuse_objects, p.inuse_bytes) for _, p in split] == [(2, 1750), (5, 5251)]
    assert [labels.get("thread") for labels, _ in split] == ["MainThread", "worker-1"]
    assert split[0][0]["task"] == "fetch" and "task" not in split[1][0]
    assert all(labels["coro"] == split[0][0]["coro"] for labels, _ in split)  # tracemalloc's
    (alone,) = [labels for labels, site in parts if site.stack[-1].line == MAIN[2]]
    assert "thread" not in alone
    assert by_label(agg, "thread")["worker-1"].live_bytes == 5251
    tasks, _ = task_figures(agg)
    assert [(o.name, o.value) for o in tasks] == [("fetch", 1000.0)]  # the samples'
    assert agg.profile().comments[-1].startswith("exact mode: the thread")

    sampled = Aggregator(Sampling("sampled", 2))  # outside exact mode: ignored
    sampled.apply_labelled(labelled)
    assert sampled.labelled is None


def test_apportion_keeps_the_total() -> None:
    assert apportion(10, [1.0, 1.0, 1.0]) == [3, 4, 3]
    assert apportion(7, [0.3, 0.0, 5.2, 1e-9]) == [0, 0, 7, 0]
    assert apportion(3, [1e300, 1e300]) == [2, 1]
    assert apportion(0, [1.0, 2.0]) == [0, 0]


def test_label_samples_keep_a_quarter_of_the_session_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A hostile agent filling both the exact stacks and the label samples makes a session
    hold at most 1.25 times the limits, not twice."""
    monkeypatch.setattr(aggregate, "MAX_SITES", 8)
    agg = Aggregator(Sampling("exact", 1))
    stacks = [{"id": i, "frames": [["f", "/m.py", i]]} for i in range(1, 11)]
    agg.add_labelled_stacks(stacks)
    agg.add_stacks(stacks)
    assert agg.labelled is not None and len(agg.labelled.sites) == 2 and len(agg.sites) == 8
