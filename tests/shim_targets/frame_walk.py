"""The in-place frame walk (3.11+) against the frame API: the same stacks, the same labels.

A workload runs with every allocation sampled (rate 1) and the shim reading frames in
place, each capture also walked through PyThreadState_GetFrame/PyFrame_GetBack and
compared (Shim.walk_check): the same code objects, instruction offsets and frames. Then
it runs again on the frame API alone, for the task labels of either run. It puts on the
stack what the walk must keep or skip: generators, a coroutine inside a C Task and
one inside asyncio's Python Task (labelled through the table of coroutine frames, not the
name probe), C code calling back into Python (sorted's key: an entry frame on 3.12+),
closures and cells (made before RESUME: frames not yet traceable), exceptions, exec'd
code, class bodies, recursion deeper than max_frames (truncated stacks). Printed: the
captures compared and those that differed, and per run the stacks through workload()
with their truncation and task label (the two runs' sets differ a little: the API's walk
makes frame objects, which some allocations then find made).
"""

import asyncio
import os
import sys

from heapspy_agent.labels import LabelNamer, task_name

from _common import emit, load

HERE = os.path.basename(__file__)
MAX_FRAMES = 12


def recurse(n: int) -> object:
    if n == 0:
        return [bytearray(64) for _ in range(3)]
    return recurse(n - 1)


def values() -> object:
    for i in range(5):
        yield bytearray(100 + i)


def with_cells() -> object:
    kept = [1, 2]

    def inner() -> object:
        return kept + [3]

    return inner()


class Holder:
    def __init__(self) -> None:
        self.data = {str(i): i for i in range(10)}


def through_c() -> object:
    return sorted(range(20), key=lambda v: str(v) * 3)


def with_exception() -> object:
    try:
        raise ValueError("x" * 50)
    except ValueError as e:
        return str(e)


async def in_task(n: int) -> object:
    await asyncio.sleep(0)
    return [bytearray(200) for _ in range(n)]


async def in_python_task(namer: LabelNamer) -> object:
    namer.refresh()  # registers this task's coroutine frame, as an interval would
    return [bytearray(300) for _ in range(2)]


async def amain(namer: LabelNamer) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_task(in_task(3), name="walker")
    await asyncio.gather(*(in_task(2) for _ in range(2)))
    python_task = asyncio.tasks._PyTask(in_python_task(namer), loop=loop, name="py-walker")
    await python_task


def workload(namer: LabelNamer) -> None:
    recurse(20)
    recurse(2)
    list(values())
    with_cells()
    Holder()
    class Local:  # a class body
        items = [bytearray(40) for _ in range(2)]

    through_c()
    with_exception()
    exec(compile("made = [bytearray(30) for _ in range(2)]", "<walk-exec>", "exec"), {})
    asyncio.run(amain(namer))


def run(in_place: bool) -> "dict[str, object]":
    shim = load()
    shim.start(1, max_frames=MAX_FRAMES, seed=7, walk_in_place=in_place)
    walked = shim.walks_in_place
    namer = LabelNamer(shim)
    namer.refresh()  # anchors and the task probe
    shim.walk_check(in_place)
    workload(namer)
    checked, differ = shim.walk_check(False)
    drain = shim.drain()
    labels = {ls.label_id: ls for ls in drain.new_labels}
    stacks = set()
    for s in drain.new_stacks:
        if not any(f.function == "workload" for f in s.frames):
            continue
        # from workload() on: the frames above it are the caller's, on another line
        kept = s.frames[[f.function for f in s.frames].index("workload") :]
        frames = tuple((f.function, os.path.basename(f.filename), f.line) for f in kept)
        label = labels.get(s.label)
        name = task_name(label.name) if label is not None and label.name is not None else ""
        if name.startswith("Task-"):  # default names count tasks made in either run
            name = "Task-N"
        slot = bool(label is not None and label.task)
        stacks.add(repr((frames, s.truncated, name, slot)))
    assert shim.stop()
    return {"walked": walked, "checked": checked, "differ": differ, "stacks": sorted(stacks)}


class _Idle:
    def refresh(self) -> None:
        pass


workload(_Idle())  # imports, caches and first-call work done before either run
run(False)  # and what a first session's start changes (asyncio's loop, the namer)
run(True)
emit({"in_place": run(True), "api": run(False), "minor": sys.version_info[1]})
