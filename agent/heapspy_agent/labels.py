"""Names for the labels of samples: thread, asyncio task, coroutine.

The shim records, for each sample, only what it can read safely from inside an
allocator hook: the native thread id, the code object of the task's coroutine (the frame
right above asyncio's ``Handle._run`` or a Python Task's step, whose code objects we hand
it as "anchors") and a task slot, found in a table of coroutine frames this module
registers at every interval. Everything with a name is resolved here, in the agent
thread, under the GIL, by ordinary Python code:

- ``thread``: the Python name of the thread with that native id, alive at the drain that
  reports the label set or at an earlier interval (``tid N`` when it ended unseen);
  ``thread_id``: the native id.
- ``coro``: the coroutine's qualified name (``co_name`` before 3.11; heapspy qualifies it
  from the source), as a frame ``[name, file, line]``. Only code flagged as a coroutine
  or generator: a plain callback run by the loop gets no ``coro``.
- ``task``: ``Task.get_name()`` of the task, for tasks registered at an earlier interval.
  A task's samples taken before the first interval that sees it alive carry ``coro`` but
  no ``task``; a task that starts and finishes within one interval never gets one. Tasks
  with asyncio's default name (``Task-<n>``, one per task) are not registered, so that
  label sets, and the stacks split by them, stay bounded: their samples carry ``coro``.

A label set, once named, keeps its names: samples of a task that has finished keep its
name (that is how a leaking task is found after it ends).

Exact mode (tracemalloc) keeps a file and line per frame and nothing else: its stacks get
``coro`` only, found as the frame after an anchor's line in each traceback (named by
heapspy from the source, as exact mode's frames are); no ``thread`` or ``task``. The
exact bytes per thread come from the totals shim that runs beside tracemalloc.

The wire form of a label set (``schema``'s LABELS record)::

    {"thread": "worker-1", "thread_id": 4242, "task": "fetch-user",
     "coro": ["fetch_user", "/app/svc.py", 31]}

with keys left out where there is nothing to say. Standard library only, Python 3.8.
"""

import sys
import threading

from heapspy_agent import runtime

# typing is for the type checker only: the agent imports nothing it does not need
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple

MAX_TASK_NAMES = 4096  # distinct task names given slots; later names are not labelled
MAX_THREAD_NAMES = 16384  # native ids remembered with their names
MAX_NAME = 200
# CO_GENERATOR | CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR
_CORO_FLAGS = 0x20 | 0x80 | 0x100 | 0x200


def anchor_codes() -> "List[Any]":
    """The code objects right below a task's coroutine frame: asyncio's Handle._run (the
    C Task steps the coroutine from there) and the Python Task's step methods; empty
    until the target has imported asyncio itself."""
    events = sys.modules.get("asyncio.events")
    tasks = sys.modules.get("asyncio.tasks")
    if events is None or tasks is None:
        return []
    py_task = getattr(tasks, "_PyTask", None)
    functions = [
        getattr(getattr(events, "Handle", None), "_run", None),
        getattr(py_task, "_Task__step", None),
        getattr(py_task, "_Task__step_run_and_handle_result", None),  # 3.12+
    ]
    codes = [getattr(f, "__code__", None) for f in functions]
    return [c for c in codes if c is not None]


def code_lines(code: "Any") -> "List[int]":
    """The line numbers a code object's instructions carry (co_lines 3.10+, co_lnotab
    before): where tracemalloc's frames of that function can point."""
    lines = getattr(code, "co_lines", None)
    if lines is not None:
        return sorted({ln for _, _, ln in lines() if ln is not None})
    line = code.co_firstlineno
    out = [line]
    table = code.co_lnotab
    for i in range(1, len(table), 2):
        step = table[i]
        line += step if step < 128 else step - 256
        out.append(line)
    return sorted(set(out))


def anchor_lines() -> "List[Tuple[str, int]]":
    """(file, line) of every line of the anchors: exact mode finds a task's coroutine in
    tracemalloc's tracebacks, which have no code objects, as the frame after one."""
    return [(c.co_filename, ln) for c in anchor_codes() for ln in code_lines(c)]


def _task_classes() -> "List[Any]":
    tasks = sys.modules.get("asyncio.tasks")
    if tasks is None:
        return []
    classes = [getattr(tasks, "Task", None), getattr(tasks, "_CTask", None)]
    classes.append(getattr(tasks, "_PyTask", None))
    return [c for c in classes if c is not None]


def task_name_and_coro(task: "Any", classes: "List[Any]") -> "Tuple[str, Any]":
    """The task's name and coroutine through asyncio's own methods (a subclass's
    overrides are not called: we run no code of the target's); ("", None) if neither."""
    for cls in classes:
        if isinstance(task, cls):
            try:
                return str(cls.get_name(task)), cls.get_coro(task)
            except Exception:  # noqa: BLE001 - a task being torn down under us
                return "", None
    return "", None


def coro_frame(coro: "Any") -> "Any":
    """The coroutine's frame object (cr_frame, or gi_frame for a generator-based one)."""
    frame = getattr(coro, "cr_frame", None)
    if frame is None:
        frame = getattr(coro, "gi_frame", None)
    return frame


def code_label(code: "Any") -> "Optional[List[Any]]":
    """A coroutine's code as ``[name, file, line]``, or None for code that is not a
    coroutine or generator (a plain callback the loop runs)."""
    if not getattr(code, "co_flags", 0) & _CORO_FLAGS:
        return None
    name = getattr(code, "co_qualname", None) or code.co_name
    line = code.co_firstlineno
    lnotab = getattr(code, "co_lnotab", b"") if sys.version_info < (3, 10) else b""
    if sys.version_info < (3, 11):
        # the first statement's line (a decorated function starts at its decorator):
        # heapspy finds the qualified name from a line inside the function
        lines = getattr(code, "co_lines", None)
        if lines is not None:
            for _, _, ln in lines():
                if ln is not None:
                    line = ln
                    break
        elif len(lnotab) >= 2:
            line += lnotab[1] if lnotab[1] < 128 else lnotab[1] - 256
    return [str(name)[:MAX_NAME], str(code.co_filename), int(line)]


class LabelNamer:
    """Keeps the shim's anchors and task table up to date and names its label sets."""

    def __init__(self, shim: "Any") -> None:
        self.shim = shim
        self._anchors = []  # type: List[Any]
        self._thread_names = {}  # type: Dict[int, str]
        self._slots = {}  # type: Dict[str, int]
        self._names = [""]  # type: List[str]
        self.unnamed_tasks = 0  # names beyond MAX_TASK_NAMES

    def refresh(self, tasks: bool = True) -> None:
        """At each interval: the threads alive now and, with ``tasks`` (a collector that
        takes samples), anchors once asyncio is there and the tasks alive now registered
        for the samples to come: O(tasks) in the target, each interval."""
        self._see_threads()
        if not tasks:
            return
        if not self._anchors:
            anchors = anchor_codes()
            if anchors:
                self.shim.set_anchors(anchors)
                self._anchors = anchors  # kept alive: the shim compares their addresses
        if self._anchors:
            self.shim.set_tasks(self._live_tasks())

    def _see_threads(self) -> None:
        for t in threading.enumerate():
            tid = getattr(t, "native_id", None)
            if tid is None:
                continue
            if tid not in self._thread_names and len(self._thread_names) >= MAX_THREAD_NAMES:
                continue
            self._thread_names[tid] = str(t.name)[:MAX_NAME]

    def _slot(self, name: str) -> int:
        slot = self._slots.get(name)
        if slot is None:
            if len(self._names) > MAX_TASK_NAMES:
                self.unnamed_tasks += 1
                return 0
            slot = self._slots[name] = len(self._names)
            self._names.append(name)
        return slot

    def _live_tasks(self) -> "List[Tuple[int, int, int]]":
        classes = _task_classes()
        table = []
        for task in runtime.pending_tasks():
            name, coro = task_name_and_coro(task, classes)
            if not name or (name.startswith("Task-") and name[5:].isdigit()):
                continue  # asyncio's default name: one per task
            frame = coro_frame(coro)
            if frame is None:
                continue
            slot = self._slot(name[:MAX_NAME])
            if slot:
                table.append((id(frame), id(frame.f_code), slot))
        return table

    def name(self, thread_id: int, task: int, coro: "Any") -> "Dict[str, Any]":
        """The wire form of one label set (see the module's docstring)."""
        if thread_id and thread_id not in self._thread_names:
            self._see_threads()  # started since the last interval, maybe still alive
        out = {}  # type: Dict[str, Any]
        if thread_id:
            out["thread"] = self._thread_names.get(thread_id, "tid %d" % thread_id)
            out["thread_id"] = thread_id
        if coro is not None:
            frame = code_label(coro)
            if frame is not None:
                out["coro"] = frame
                if 0 < task < len(self._names):
                    out["task"] = self._names[task]
        return out

    def thread_alloc(self, threads: "Any") -> "List[List[Any]]":
        """Exact bytes allocated per thread, [native id, bytes, name], most first."""
        rows = [
            [tid, nbytes, self._thread_names.get(tid, "tid %d" % tid) if tid else "(others)"]
            for tid, nbytes in threads
            if nbytes
        ]
        rows.sort(key=lambda r: -r[1])
        return rows
