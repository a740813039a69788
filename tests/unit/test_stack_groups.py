"""Threads and tasks grouped by stack: the agent's walk and its limits, the schema's
checks on what a hostile agent sends, the sidecar read back from anywhere."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Generator
from typing import Any

import pytest
from heapspy_agent import protocol, schema, stacks
from heapspy_agent.protocol import ProtocolError

from heapspy.model import Frame
from heapspy.stack_groups import THREAD, StackDump, StackGroup, merge


def _reply(**fields: Any) -> dict[str, Any]:
    return schema.check(protocol.REPLY, {"id": 1, "ok": True, **fields})


# --- the agent's walk --------------------------------------------------------------------
def _inner() -> Generator[None, None, None]:
    yield


def _outer() -> Generator[None, None, None]:
    yield from _inner()


def test_the_await_chain_follows_coroutines_generators_and_names_the_rest() -> None:
    async def waits(fut: asyncio.Future[None]) -> None:
        await fut

    async def top(fut: asyncio.Future[None]) -> None:
        await waits(fut)

    loop = asyncio.new_event_loop()
    try:
        fut = loop.create_future()
        coro = top(fut)
        coro.send(None)  # now suspended in waits(), awaiting the future
        frames, awaits = stacks.await_chain(coro, 64)
        assert [f[0].rsplit(".", 1)[-1] for f in frames] == ["top", "waits"]
        assert awaits == "_asyncio.FutureIter"  # the C Future's __await__ iterator
        assert stacks.await_chain(coro, 1)[0] == frames[:1]  # the depth is a limit
        coro.close()
        gen = _outer()
        next(gen)
        frames, awaits = stacks.await_chain(gen, 64)
        assert [f[0] for f in frames] == ["_outer", "_inner"] and awaits is None
        gen.close()
        assert stacks.await_chain(object(), 64) == ([], "object")
    finally:
        loop.close()


def test_thread_groups_count_identical_stacks_and_leave_the_caller_out() -> None:
    stop = threading.Event()
    started = [threading.Thread(target=stop.wait, name=f"same-{i}") for i in range(5)]
    for t in started:
        t.start()
    try:
        groups = stacks.thread_groups(threading.get_ident(), 64)
        found, left_out = groups.to_json(schema.STACK_BUDGET)
    finally:
        stop.set()
        for t in started:
            t.join()
    assert left_out == 0 and groups.total == sum(g["count"] for g in found)
    (same,) = [g for g in found if g["names"] and g["names"][0].startswith("same-")]
    assert same["count"] == 5 and sorted(same["names"]) == [f"same-{i}" for i in range(5)]
    assert not any(threading.current_thread().name in g["names"] for g in found)


def test_the_agent_keeps_a_reply_within_the_frame_and_counts_what_it_leaves_out() -> None:
    groups = stacks._Groups()
    frame = ("f" * schema.MAX_FUNCTION, "p" * schema.MAX_TEXT, 1)
    for i in range(300):  # 300 distinct stacks of 128 frames with the longest names
        groups.add([frame] * (schema.MAX_STACK_DEPTH - 1) + [("g", "m.py", i)], None, "t")
        groups.add([("g", "m.py", i)], None, "t")
    found, left_out = groups.to_json(schema.STACK_BUDGET // 2)
    assert found and left_out > 0 and sum(g["count"] for g in found) + left_out == 600
    body = {"id": 1, "ok": True, "threads": found, "tasks": [], "thread_count": 600}
    body["left_out"] = [left_out, 0]
    data = protocol.encode(protocol.REPLY, body)
    assert len(data) <= protocol.MAX_FRAME
    assert schema.check(protocol.REPLY, protocol.decode(data[5:]))["threads"] == found


# --- what a hostile agent may send ---------------------------------------------------------
GROUP = {"count": 3, "names": ["a"], "frames": [["f", "m.py", 1]]}


@pytest.mark.parametrize(
    ("group", "match"),
    [
        ({**GROUP, "count": 0}, "out of range"),
        ({**GROUP, "count": True}, "expected an integer"),
        ({**GROUP, "names": ["x" * (schema.MAX_STACK_NAME + 1)]}, "at most 200"),
        ({**GROUP, "names": ["a"] * (schema.MAX_GROUP_NAMES + 1)}, "items"),
        ({**GROUP, "frames": [["f", "m.py", 1]] * (schema.MAX_STACK_DEPTH + 1)}, "items"),
        ({**GROUP, "frames": [["f", "m.py", -1]]}, "out of range"),
        ({**GROUP, "awaits": 5}, "expected a string"),
        ({"names": []}, "count is missing"),
    ],
)
def test_a_stacks_reply_out_of_bounds_is_a_protocol_error(group: Any, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        _reply(threads=[group])


def test_too_many_groups_are_refused() -> None:
    with pytest.raises(ProtocolError, match="items"):
        _reply(tasks=[GROUP] * (schema.MAX_STACK_GROUPS + 1))
    with pytest.raises(ProtocolError, match="out of range"):
        _reply(left_out=[-1, 0])


def test_a_checked_reply_becomes_merged_groups_most_common_first() -> None:
    other = {"count": 9, "names": ["b"], "frames": [["g", "m.py", 2]], "awaits": "X"}
    dump = StackDump.of_reply(
        _reply(threads=[GROUP, GROUP], tasks=[other], thread_count=6, task_count=9)
    )
    (threads,) = dump.threads.groups
    assert (threads.count, threads.names, dump.threads.count) == (6, ("a", "a"), 6)
    assert dump.tasks is not None and dump.tasks.groups[0].awaits == "X"
    assert StackDump.read({"stacks": dump.to_json()}) == dump


# --- the sidecar, read back -------------------------------------------------------------
@pytest.mark.parametrize(
    "stacks_json",
    [None, 5, [], {"threads": 3}, {"threads": {"groups": "x"}}],
)
def test_a_malformed_sidecar_section_reads_as_none_or_empty(stacks_json: Any) -> None:
    dump = StackDump.read({"stacks": stacks_json})
    assert dump is None or dump.threads.groups == ()


def test_bad_groups_in_a_sidecar_are_skipped_and_text_is_bounded() -> None:
    groups = [
        {"count": -1, "frames": []},
        {"count": 2, "frames": [["f", 3, 1]]},
        {"count": 2, "frames": [["f" * 5000, "m.py", 1]], "names": ["\x1b[31mred", 7]},
    ]
    dump = StackDump.read({"stacks": {"source": "evil", "threads": {"groups": groups}}})
    assert dump is not None and dump.source == "?"
    (group,) = dump.threads.groups
    assert len(group.stack[0].function) == schema.MAX_FUNCTION and group.names == ("\x1b[31mred",)
    assert "\x1b" not in "\n".join(dump.lines()) and "\\x1b[31mred" in "\n".join(dump.lines())


def test_headline_names_the_innermost_frames_and_how_many() -> None:
    stack = (Frame("main", "/a/app.py", 3), Frame("handle", "/a/app.py", 31))
    group = StackGroup(THREAD, 40, ("pool-1", "pool-2", "pool-3", "pool-4"), stack)
    assert group.headline() == (
        "40 threads (pool-1, pool-2, pool-3, ... 37 more) at handle (app.py:31) <- main (app.py:3)"
    )
    (merged,) = merge([group, group])
    assert merged.count == 80 and len(merged.names) == schema.MAX_GROUP_NAMES
