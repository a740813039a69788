"""The target's runtime statistics, Go's ``runtime.MemStats`` analogue, read each
interval: garbage collections and the time they took, threads, asyncio tasks.

Everything here is read from the agent thread while the target runs, so it only reads
what is safe to read from another thread under the GIL, and imports nothing: asyncio is
looked at only when the target has imported it itself. The one thing installed in the
target is a ``gc.callbacks`` entry that times collections; ``GcTimer.remove`` takes it
out at detach and in a forked child.
"""

import gc
import sys
import threading
import time

# typing is for the type checker only: the agent imports nothing it does not need
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable

MAX_THREAD_NAMES = 64
MAX_NAME = 200
MAX_LOOPS = 16
# A thread's frames are walked at most this deep looking for a running event loop.
MAX_DEPTH = 200


class GcTimer:
    """Time spent in garbage collection, measured by a ``gc.callbacks`` entry.

    The callback runs inside every collection in whichever thread triggered it: it does
    two clock reads and an addition, allocates nothing and never raises."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0
        self._installed = False

    def __call__(self, phase: str, info: object) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        elif self._start:
            self.seconds += time.perf_counter() - self._start
            self._start = 0.0

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self)
            self._installed = True

    def remove(self) -> None:
        """Take our entry out (only ours: the target may have its own)."""
        if self._installed:
            self._installed = False
            try:
                gc.callbacks.remove(self)
            except ValueError:  # the target replaced the list
                pass


def gc_facts(base: "list[dict[str, int]]") -> "dict[str, list[int]]":
    """Collections, objects collected and uncollectable per generation since ``base``."""
    stats = gc.get_stats()
    out = {"gc_collections": [], "gc_collected": [], "gc_uncollectable": []}  # type: dict[str, list[int]]
    for now, then in zip(stats, base):
        out["gc_collections"].append(now.get("collections", 0) - then.get("collections", 0))
        out["gc_collected"].append(now.get("collected", 0) - then.get("collected", 0))
        out["gc_uncollectable"].append(now.get("uncollectable", 0) - then.get("uncollectable", 0))
    return out


def thread_names(skip: int) -> "list[str]":
    """The target's Python threads' names (the agent's own, ``skip``, left out)."""
    names = []
    for t in threading.enumerate():
        if t.ident == skip:
            continue
        names.append(str(t.name)[:MAX_NAME])
        if len(names) >= MAX_THREAD_NAMES:
            break
    return names


def _running_loops() -> "list[object]":
    """Event loops running in some thread, found as ``self`` of a ``run_forever`` frame.

    Only on 3.13+, where reading another thread's ``f_locals`` returns a read-through
    proxy; before that it copies the frame's locals into a dict stored on the frame, which
    we do not do to a running frame of the target's."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None or sys.version_info < (3, 13):
        return []
    loop_type = getattr(asyncio, "AbstractEventLoop", None)
    loops = []  # type: list[object]
    for frame in list(sys._current_frames().values()):
        depth = 0
        f = frame
        while f is not None and depth < MAX_DEPTH:
            if f.f_code.co_name == "run_forever":
                loop = f.f_locals.get("self")
                if loop_type is not None and isinstance(loop, loop_type) and loop not in loops:
                    loops.append(loop)
                break
            f = f.f_back
            depth += 1
        if len(loops) >= MAX_LOOPS:
            break
    return loops


def _snapshot(collection: "Iterable[object]") -> "list[object]":
    """A list of a set another thread may be changing: retried as asyncio does."""
    for _ in range(100):
        try:
            return list(collection)
        except RuntimeError:  # noqa: PERF203 - it changed size while we read: again
            continue
    return []


def _pending_by_loop() -> "list[tuple[int, object]]":
    """(id of its loop, task) for each unfinished asyncio task (none without asyncio)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return []
    tasks_mod = sys.modules.get("asyncio.tasks")
    if sys.version_info >= (3, 14):
        found = []  # type: list[tuple[int, object]]
        for loop in _running_loops():
            try:
                tasks = asyncio.all_tasks(loop)
            except Exception:  # noqa: BLE001 - a loop closing under us
                continue
            found += [(id(loop), task) for task in tasks]
        return found
    pending = []  # type: list[object]
    if sys.version_info >= (3, 12):
        pending += _snapshot(getattr(tasks_mod, "_scheduled_tasks", ()))
        pending += _snapshot(getattr(tasks_mod, "_eager_tasks", ()))
    else:
        pending += _snapshot(getattr(tasks_mod, "_all_tasks", ()))
    found = []
    for task in pending:
        # attributes, not done(): a Task subclass may override methods, and we run no
        # code of the target's
        if getattr(task, "_state", None) == "PENDING":
            found.append((id(getattr(task, "_loop", None)), task))
    return found


def pending_tasks() -> "list[object]":
    """Every unfinished asyncio task of every loop (3.14: of every running loop)."""
    return [task for _, task in _pending_by_loop()]


def asyncio_tasks() -> "list[int]":
    """Unfinished asyncio tasks per running loop (empty when asyncio is not in use)."""
    by_loop = {}  # type: dict[int, int]
    for key, _ in _pending_by_loop():
        by_loop[key] = by_loop.get(key, 0) + 1
    return sorted(by_loop.values(), reverse=True)[:MAX_LOOPS]
