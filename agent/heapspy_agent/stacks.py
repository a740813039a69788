"""Every thread's stack and every pending asyncio task's coroutine stack, grouped by
identical stack with counts: what a thread- or task-leak rule's dump shows ("47 tasks
at Queue.get (queues.py:186) <- consume (consumer.py:88)").

Run in the agent thread when heapspy asks (COMMAND stacks). It runs none of the
target's code: names come from where the objects keep them (a Thread's ``_name``, a C
Task's name and coroutine through ``_asyncio.Task``'s own methods, never a subclass's
override), functions and files from code objects, and an awaited object that is not a
coroutine or a generator is named by its type, never by ``repr``. Counts, names and
stacks stay within ``schema``'s limits, and the walk gives the GIL back every few
hundred tasks, so a target with 100,000 tasks is not stopped while they are read.
"""

import sys
import threading
import time
import types

from heapspy_agent import runtime, schema

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple

    FrameT = Tuple[str, str, int]
    Key = Tuple[Tuple[FrameT, ...], Optional[str]]

# Tasks read at most (the rest are counted, not walked); the GIL is given back after
# every YIELD_EVERY of them.
MAX_TASKS = 100000
YIELD_EVERY = 256
_CORO = types.CoroutineType
_GEN = types.GeneratorType
_AGEN = types.AsyncGeneratorType
_TYPE_NAME = type.__dict__["__qualname__"]
_TYPE_MODULE = type.__dict__["__module__"]


def _text(value: "object", limit: int) -> str:
    """A string the target stored, only if it is a real str (a subclass could run code
    when converted), clipped."""
    if type(value) is not str:
        return "?"
    return value if len(value) <= limit else value[: limit - 3] + "..."


def _frame(frame: "Any") -> "FrameT":
    code = frame.f_code
    name = getattr(code, "co_qualname", None) or code.co_name
    line = frame.f_lineno  # None on 3.12+ for an instruction without a line
    return (
        _text(name, schema.MAX_FUNCTION),
        _text(code.co_filename, schema.MAX_TEXT),
        line if type(line) is int and line >= 0 else 0,
    )


def _type_name(cls: "type") -> str:
    """``module.QualName`` read through ``type``'s own descriptors (a metaclass's
    override of ``__qualname__`` would be the target's code)."""
    name = _text(_TYPE_NAME.__get__(cls, type), schema.MAX_FUNCTION // 2)
    module = _TYPE_MODULE.__get__(cls, type)
    if type(module) is str and module != "builtins":
        return _text(module, schema.MAX_FUNCTION // 2) + "." + name
    return name


class _Groups:
    """Stacks seen, by (frames, awaited type), with counts and the first few names."""

    def __init__(self) -> None:
        self.by_key = {}  # type: Dict[Key, List[Any]]
        self.total = 0

    def add(self, frames: "List[FrameT]", awaits: "Optional[str]", name: "str") -> None:
        self.total += 1
        key = (tuple(frames), awaits)
        group = self.by_key.get(key)
        if group is None:
            self.by_key[key] = [1, [name]]
        else:
            group[0] += 1
            if len(group[1]) < schema.MAX_GROUP_NAMES:
                group[1].append(name)

    def to_json(self, budget: int) -> "Tuple[List[Dict[str, Any]], int]":
        """The groups, most common first, within ``budget`` bytes of JSON (about) and
        the group limit; and how many threads or tasks the groups left out hold."""
        out = []  # type: List[Dict[str, Any]]
        used = shown = 0
        ordered = sorted(self.by_key.items(), key=lambda item: -item[1][0])
        for (frames, awaits), (count, names) in ordered:
            size = 64 + sum(len(f) + len(fn) + 24 for f, fn, _ in frames) * 2
            size += sum(len(n) * 2 + 4 for n in names) + len(awaits or "") * 2
            if len(out) >= schema.MAX_STACK_GROUPS or used + size > budget:
                break
            group = {"count": count, "names": names, "frames": [list(f) for f in frames]}
            if awaits is not None:
                group["awaits"] = awaits
            out.append(group)
            used += size
            shown += count
        return out, self.total - shown


def _attrs(obj: "object") -> "Dict[str, Any]":
    """The instance's own attributes, without its class's ``__getattribute__``."""
    try:
        attrs = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        return {}
    return attrs if type(attrs) is dict else {}


def _thread_names() -> "Dict[int, str]":
    names = {}  # type: Dict[int, str]
    for ident, thread in list(getattr(threading, "_active", {}).items()):
        names[ident] = _text(_attrs(thread).get("_name"), schema.MAX_STACK_NAME)
    return names


def thread_groups(skip: int, depth: int) -> "_Groups":
    """Every thread's Python stack (root first, its innermost ``depth`` frames), the
    agent's own thread (``skip``) left out."""
    groups = _Groups()
    names = _thread_names()
    for ident, frame in list(sys._current_frames().items()):
        if ident == skip:
            continue
        frames = []  # type: List[FrameT]
        f = frame  # type: Optional[Any]
        while f is not None and len(frames) < depth:
            frames.append(_frame(f))
            f = f.f_back
        frames.reverse()
        groups.add(frames, None, names.get(ident, "thread %d" % ident))
    return groups


def _task_parts(task: "Any", ctask: "Any") -> "Tuple[Any, Any]":
    """A task's coroutine and name, without calling anything the task's class defines
    (``isinstance`` would read a ``__class__`` it may define: the type is asked)."""
    if ctask is not None and issubclass(type(task), ctask):
        return ctask.get_coro(task), ctask.get_name(task)
    attrs = _attrs(task)
    return attrs.get("_coro"), attrs.get("_name")


def await_chain(coro: "Any", depth: int) -> "Tuple[List[FrameT], Optional[str]]":
    """The frames of a coroutine and of what it awaits, outermost first, and the type of
    the object at the end of the chain when that is not a coroutine or generator (a
    Future, say): followed through ``cr_await``, ``gi_yieldfrom`` and ``ag_await``."""
    frames = []  # type: List[FrameT]
    obj = coro
    while obj is not None and len(frames) < depth:
        kind = type(obj)
        if kind is _CORO:
            frame, obj = obj.cr_frame, obj.cr_await
        elif kind is _GEN:
            frame, obj = obj.gi_frame, obj.gi_yieldfrom
        elif kind is _AGEN:
            frame, obj = obj.ag_frame, obj.ag_await
        else:
            return frames, _type_name(kind)
        if frame is None:  # finished (or, for an async generator, not running)
            break
        frames.append(_frame(frame))
    return frames, None


def task_groups(depth: int) -> "_Groups":
    """Every pending asyncio task's coroutine stack."""
    groups = _Groups()
    tasks = runtime.pending_tasks()
    ctask = getattr(sys.modules.get("_asyncio"), "Task", None)
    for i, task in enumerate(tasks):
        if i >= MAX_TASKS:
            groups.total += len(tasks) - i
            break
        if i and i % YIELD_EVERY == 0:
            time.sleep(0)  # let the target's threads run between slices
        try:
            coro, name = _task_parts(task, ctask)
            frames, awaits = await_chain(coro, depth)
        except Exception:  # noqa: BLE001 - an object not as asyncio makes it: not read
            frames, awaits, name = [], "?", None
        groups.add(frames, awaits, _text(name, schema.MAX_STACK_NAME))
    return groups


def stacks_reply(skip: int, depth: int) -> "Dict[str, Any]":
    """The REPLY fields of COMMAND stacks: threads, then tasks, each within half of the
    frame's budget."""
    began = time.perf_counter()
    threads = thread_groups(skip, depth)
    tasks = task_groups(depth)
    budget = schema.STACK_BUDGET // 2
    thread_json, threads_left_out = threads.to_json(budget)
    task_json, tasks_left_out = tasks.to_json(budget)
    return {
        "threads": thread_json,
        "tasks": task_json,
        "thread_count": threads.total,
        "task_count": tasks.total,
        "left_out": [threads_left_out, tasks_left_out],
        "seconds": time.perf_counter() - began,
    }
