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
- ``task``: the task's name as it was when the sample was taken. For asyncio's C Task
  (``asyncio.Task`` itself, the common case) the shim reads the name object at sample
  time, through offsets measured here once asyncio is imported (``task_probe``, and
  ``wakeup_probe`` for the steps after a real ``await``, run by the task's wakeup
  callback rather than its step wrapper), so a task that starts and ends between two
  intervals keeps its name. Default names are
  labelled too (``Task-<n>``; 3.13+ keeps an int until someone asks, rendered the same).
  Each name object is its own label set (a name given as a literal is one object), up
  to the shim's HS_MAX_NAMED (8192) label sets holding a name, at most half of them
  default names (one per task), so that those cannot crowd out the names a service
  gives; beyond, the interval table's name or none (``coro`` and ``thread`` stay).
  A Python subclass of ``asyncio.Task`` (a custom task factory's) is read the same way,
  through the C Task's fields: its stored name, whatever its ``get_name()`` says. Other
  tasks (a Python Task, or before the probe is in place) are named from a table of the
  tasks alive at each interval: their samples taken before the first interval that sees
  them alive carry ``coro`` but no ``task``. A 3.12+ eager
  task's first step runs inside ``create_task``, right below the eager task factory's
  frame (an anchor): its samples carry its ``coro`` and no ``task``.

A label set, once named, keeps its names: samples of a task that has finished keep its
name (that is how a leaking task is found after it ends).

Exact mode (tracemalloc) keeps a file and line per frame and nothing else: its stacks get
``coro`` only, found as the frame after an anchor's line in each traceback (named by
heapspy from the source, as exact mode's frames are); no ``thread`` or ``task``. Every
allocation is a trace there, recorded by tracemalloc's own hook, which has no place for a
label: adding one means a lookup per allocation (what the issue rules out), and matching
traces to threads or tasks afterwards has nothing to match on (a traceback holds no frame
or thread identity, and one line runs in many tasks). The exact bytes per thread come
from the totals shim that runs beside tracemalloc (README: "Whose memory it is").

The wire form of a label set (``schema``'s LABELS record)::

    {"thread": "worker-1", "thread_id": 4242, "task": "fetch-user",
     "coro": ["fetch_user", "/app/svc.py", 31]}

with keys left out where there is nothing to say. Standard library only, Python 3.8.
"""

import ctypes
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
    C Task steps the coroutine from there), the Python Task's step methods and (3.12+)
    the eager task factory; empty until the target has imported asyncio itself."""
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
    return [c for c in codes if c is not None] + _eager_factory_code(tasks)


def _eager_factory_code(tasks: "Any") -> "List[Any]":
    """3.12+: the code of the task factories create_eager_task_factory makes (asyncio's
    eager_task_factory is one), found among its constants. A C Task made by one takes its
    first step inside the factory's call, right below that step's coroutine: as an
    anchor, it gives that step its own ``coro`` (and no ``task``: asyncio names the task
    only after the factory returns before 3.14, and nothing reachable from the frame
    holds it) instead of the labels of the task that called create_task."""
    make = tasks.__dict__.get("create_eager_task_factory")
    if type(make).__name__ != "function":
        return []
    return [
        c for c in make.__code__.co_consts if type(c).__name__ == "code" and c.co_name == "factory"
    ]


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


def _words(address: int, n: int) -> "Any":
    return (ctypes.c_uint64 * n).from_address(address)


def _find(address: int, n: int, value: int, then: int = 0) -> int:
    """The offset of the first of n words at address equal to value (and, with then,
    followed by it), ignoring the low two bits (3.14's stack reference tags); -1."""
    words = _words(address, n + 1)
    for k in range(n):
        if words[k] & ~3 == value and (not then or words[k + 1] & ~3 == then):
            return 8 * k
    return -1


def _locals_at(frame: "Any", first: "Any", second: "Any") -> "Tuple[int, int]":
    if sys.version_info < (3, 11):
        return -1, _find(id(frame), type(frame).__basicsize__ // 8, id(first), id(second))
    # PyFrameObject: head, f_back, then f_frame, the interpreter frame holding the locals
    ifr = _words(id(frame), 4)[3]
    return 24, _find(ifr, 40, id(first), id(second)) if ifr else -1


def _self_offset(first: "Any", second: "Any") -> "Tuple[int, int]":
    return _locals_at(sys._getframe(), first, second)


def _slot_offset(obj: "Any", value: "Any") -> int:
    return _find(id(obj), type(obj).__basicsize__ // 8, id(value))


def task_probe() -> "Optional[Tuple[Tuple[int, int, int, int, int], Any, Any]]":
    """What the shim needs to read the running C Task's name at sample time: the offsets
    of a frame's locals (its first is Handle._run's self), of Handle._callback and of the
    Task's name, each measured on objects made here (a frame of ours, an uninitialised
    Handle and Task, whose finalizers do nothing), with Handle and the C Task class (a
    Python subclass of it is read as a Task); None when asyncio is not imported, has no
    C Task, or any offset is not found."""
    events = sys.modules.get("asyncio.events")
    c_asyncio = sys.modules.get("_asyncio")
    handle_cls = getattr(events, "Handle", None)
    task_cls = getattr(c_asyncio, "Task", None)
    # only the genuine classes, through C descriptors: no code of the target's runs here
    # (a class replaced in sys.modules, a metaclass, a property named _callback)
    if type(handle_cls) is not type or type(task_cls) is not type:
        return None
    slot = handle_cls.__dict__.get("_callback")  # type: Any
    set_name = task_cls.__dict__.get("set_name")  # type: Any
    new = getattr(task_cls, "__new__", None)  # type: Any
    if (
        type(slot).__name__ != "member_descriptor"
        or type(set_name).__name__ != "method_descriptor"
        or type(new).__name__ != "builtin_function_or_method"
    ):
        return None
    # the shim walks a task's type's tp_base chain (word 32 of a type) to accept a
    # Python subclass of the C Task: checked here on the C Task (its base is Future)
    if _words(id(task_cls), 33)[32] != id(task_cls.__base__):
        return None
    try:
        first, second = object(), object()
        f_frame, local0 = _self_offset(first, second)
        handle = object.__new__(handle_cls)  # type: Any
        slot.__set__(handle, first)
        callback = _slot_offset(handle, first)
        task = new(task_cls)
        name = "heapspy-probe-%d" % id(task)
        set_name(task, name)
        name_off = _slot_offset(task, name)
    except Exception:  # noqa: BLE001 - an asyncio we do not know: no sample-time names
        return None
    if min(local0, callback, name_off) < 0:
        return None
    return (f_frame, local0, callback, name_off, _ascii_data()), handle_cls, task_cls


class _OwnLoop:
    """What a C Task and Future call on their loop, for wakeup_probe's task of our own:
    it runs nothing, it keeps what the task asks to be called soon."""

    def __init__(self) -> None:
        self.soon = []  # type: List[Tuple[Any, Tuple[Any, ...]]]

    def get_debug(self) -> bool:
        return False

    def call_soon(self, callback: "Any", *args: "Any", context: "Any" = None) -> None:
        self.soon.append((callback, args))

    def call_exception_handler(self, context: "Any") -> None:
        pass


async def _await(future: "Any") -> None:
    await future


def wakeup_probe(task_cls: "Any") -> "Optional[Tuple[Any, int, int, int]]":
    """How the shim finds the C Task a later step belongs to: after a real ``await``,
    Handle._callback is the task's wakeup callback, not its step wrapper. Measured on a
    C Task of our own (on a loop of our own that runs nothing, stepped here by hand until
    it awaits a future of ours, then woken until it ends): the callback's exact type, the
    offset of its task and, when that type is the builtin function's (3.10+: a
    ``task_wakeup`` method bound to the task), the offset and value of its method
    definition, -1 and 0 otherwise (3.8/3.9's TaskWakeupMethWrapper). None when anything
    is not as expected; on 3.14, also when this thread runs a loop (the C Task steps
    only on the thread's running loop: ours is set for the step, then unset)."""
    c_asyncio = sys.modules.get("_asyncio")
    future_cls = getattr(c_asyncio, "Future", None)
    get_loop = getattr(c_asyncio, "_get_running_loop", None)  # type: Any
    set_loop = getattr(c_asyncio, "_set_running_loop", None)  # type: Any
    if type(future_cls) is not type or task_cls.__base__ is not future_cls:
        return None
    if type(get_loop).__name__ != "builtin_function_or_method" or type(set_loop) is not type(
        get_loop
    ):
        return None
    if get_loop() is not None:
        return None
    loop = _OwnLoop()
    try:
        future = future_cls(loop=loop)
        task = task_cls(_await(future), loop=loop)
        set_loop(loop)
        try:
            step, args = loop.soon.pop()
            step(*args)  # the task's first step: it awaits our future
            future.set_result(None)
            wakeup, args = loop.soon.pop()
            if args != (future,) or loop.soon:
                return None
            wakeup(*args)  # its last step: it ends
        finally:
            set_loop(None)
        if not task.done() or loop.soon:
            return None
    except Exception:  # noqa: BLE001 - an asyncio we do not know: first steps only
        return None
    size = type(wakeup).__basicsize__ // 8
    task_off = _find(id(wakeup), size, id(task))
    if task_off < 0:
        return None
    if type(wakeup) is not type(get_loop):
        return type(wakeup), task_off, -1, 0
    # a builtin function: m_ml, its PyMethodDef (whose first word is the method's name),
    # is the word before m_self
    ml_off = task_off - 8
    ml = _words(id(wakeup) + ml_off, 1)[0]
    if ml_off < 16 or not ml or ctypes.c_char_p.from_address(ml).value != b"task_wakeup":
        return None
    return type(wakeup), task_off, ml_off, ml


def _ascii_data() -> int:
    """Where a compact ASCII str's characters start (the shim tells asyncio's default
    names, ``Task-<n>``, from the others by them), checked on one; -1 if not as expected."""
    probe = "Task-%d" % (len(sys.modules) + 1000)
    offset = sys.getsizeof("") - 1
    state = (ctypes.c_uint32 * 1).from_address(id(probe) + 32)[0]
    if state & 0x7C != 0x64 or ctypes.string_at(id(probe) + offset, len(probe)) != probe.encode():
        return -1
    return offset


def task_name(name: "Any") -> str:
    """A name object the shim read: a str, or 3.13+'s int for a default name that nobody
    asked for yet (asyncio renders it ``Task-<n>``); nothing else is rendered (no code of
    the target's runs here)."""
    if type(name) is str:
        return name[:MAX_NAME]
    if type(name) is int:
        return "Task-%d" % name
    return ""


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
        self._probe = None  # type: Optional[Tuple[Any, Any, Any]]
        self._wakeup = None  # type: Optional[Tuple[Any, int, int, int]]
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
                self._probe = task_probe()
                if self._probe is not None:  # classes kept alive: the shim compares them
                    self.shim.set_task_probe(*self._probe)
                    self._wakeup = wakeup_probe(self._probe[2])
                    if self._wakeup is not None:  # its type kept alive likewise
                        self.shim.set_wakeup_probe(self._wakeup)
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
            if not name:
                continue
            frame = coro_frame(coro)
            if frame is None:
                continue
            slot = self._slot(name[:MAX_NAME])
            if slot:
                table.append((id(frame), id(frame.f_code), slot))
        return table

    def name(
        self, thread_id: int, task: int, coro: "Any", task_obj: "Any" = None
    ) -> "Dict[str, Any]":
        """The wire form of one label set (see the module's docstring); ``task_obj`` is
        the name object the shim read at sample time, if any."""
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
                named = task_name(task_obj) if task_obj is not None else ""
                if named:
                    out["task"] = named
                elif 0 < task < len(self._names):
                    out["task"] = self._names[task]
        return out

    def thread_alloc(self, threads: "Any", skip: int) -> "List[List[Any]]":
        """Exact bytes allocated per thread, [native id, bytes, name], most first; the
        thread ``skip`` (the agent's) left out."""
        rows = [
            [tid, nbytes, self._thread_names.get(tid, "tid %d" % tid) if tid else "(others)"]
            for tid, nbytes in threads
            if nbytes and (tid != skip or not tid)
        ]
        rows.sort(key=lambda r: -r[1])
        return rows
