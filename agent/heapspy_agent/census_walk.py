"""ctypes binding of the census walk in C (``Cargo-free/census_walk.c``, built into the
shim's library): the visited bitmap, the retention paths and the walk itself.

Its signatures live here rather than in ``shim.py`` because the walk is its own ABI
(``cw_abi``), loaded by the census alone, and the library may be loaded with or without
the sampling hooks running. ``load()`` returns None where the library is missing, of
another version, or refuses this interpreter (free-threaded, Py_TRACE_REFS): the census
then walks in Python. Every call holds the GIL (ctypes.PyDLL). Standard library only,
Python 3.8 syntax.
"""

import _ctypes
import ctypes
from typing import Any, Callable, List, Optional, Tuple

ABI = 3
"""Must match CW_ABI in census_walk.c."""

_I32P = ctypes.POINTER(ctypes.c_int32)
_U64P = ctypes.POINTER(ctypes.c_uint64)


class Walker:
    """One census's state in C; ``free()`` (or garbage collection) releases it. Free it
    before the library is unloaded."""

    def __init__(self, lib: Any, handle: int, owner: "Library") -> None:
        self._lib = lib
        self._h: Optional[int] = handle
        self._owner = owner
        owner.walkers += 1

    def _handle(self) -> int:
        if self._h is None:
            raise ValueError("census walk already freed")
        return self._h

    def boundary(self, address: int) -> None:
        self._lib.cw_boundary(self._handle(), address)

    def mark(self, address: int) -> bool:
        """Mark ``address`` visited; False when it was already."""
        return bool(self._lib.cw_mark(self._handle(), address))

    def marked(self, address: int) -> bool:
        return bool(self._lib.cw_marked(self._handle(), address))

    def node(self, parent: int, name: int) -> int:
        """The path node ``parent`` + ``name`` (parent -1: a root)."""
        return int(self._lib.cw_node(self._handle(), parent, name))

    def add(self, node: int, objects: int, nbytes: int) -> None:
        self._lib.cw_add(self._handle(), node, objects, nbytes)

    def visit(self, obj: Any, node: int) -> None:
        """Count ``obj`` under the root ``node`` and walk what it reaches (``run``);
        node -1: mark it and all it reaches without counting."""
        self._lib.cw_visit(self._handle(), obj, node)

    def push(self, obj: Any, node: int) -> None:
        """Walk what ``obj`` (counted already) reaches, under ``node``."""
        self._lib.cw_push(self._handle(), obj, node)

    def run(self, budget_ns: int) -> int:
        """1: the walk is complete; 0: the budget ran out; -1: bookkeeping limit."""
        return int(self._lib.cw_run(self._handle(), max(0, budget_ns)))

    def unmarked(self, items: List[Any], start: int, out: List[Any], budget_ns: int) -> int:
        """Append the objects of ``items[start:]`` not marked to ``out`` until the budget
        runs out; the index reached."""
        return int(self._lib.cw_unmarked(self._handle(), items, start, out, max(0, budget_ns)))

    def gc_unmarked(self, out: List[Any]) -> bool:
        """3.12+: append the objects the gc tracks that are not marked to ``out``, in one
        pass; False where this interpreter cannot (then nothing was appended)."""
        return int(self._lib.cw_gc_unmarked(self._handle(), out)) == 1

    def gc_begin(self, out: List[Any], thresholds: Tuple[int, ...], collections: int) -> bool:
        """3.14: prepare the pass over the gc's lists a slice at a time (``gc_step``),
        appending the tracked objects not marked to ``out``; False where this interpreter
        cannot (``thresholds``: ``gc.get_threshold()``, checked against its gc state)."""
        if len(thresholds) < 3:
            return False
        t0, t1, t2 = thresholds[:3]
        begun = self._lib.cw_gc_begin(self._handle(), out, t0, t1, t2, collections)
        return int(begun) == 1

    def gc_step(self, budget_ns: int, collections: int) -> int:
        """One slice of that pass: 1 complete, 0 more to do, -1 given up (``collections``:
        the gc's collections so far; one between two slices starts the pass again)."""
        return int(self._lib.cw_gc_step(self._handle(), max(0, budget_ns), collections))

    def targets(self, addresses: List[int]) -> bool:
        """Note the path of each object at these addresses when the walk counts it
        (retainers); before the walk starts. False when out of memory."""
        n = len(addresses)
        return int(self._lib.cw_targets(self._handle(), (ctypes.c_uint64 * n)(*addresses), n)) == 0

    def target_paths(self, addresses: List[int]) -> List[int]:
        """The path node each of ``addresses`` was counted under; -2: not reached."""
        n = len(addresses)
        out = (ctypes.c_int32 * n)()
        self._lib.cw_target_paths(self._handle(), (ctypes.c_uint64 * n)(*addresses), out, n)
        return list(out)

    def stats(self) -> Tuple[int, int, int, int, int, int, int]:
        """objects, bytes, paths, bookkeeping bytes, paths folded, deepest stack, objects
        left to the main thread to free"""
        out = (ctypes.c_uint64 * 7)()
        self._lib.cw_stats(self._handle(), out)
        return (out[0], out[1], out[2], out[3], out[4], out[5], out[6])

    def nodes(self) -> List[Tuple[int, int, int, int]]:
        """Every path node: (parent, name id, objects, bytes); a parent comes first."""
        parent, name, count, nbytes = _I32P(), _I32P(), _U64P(), _U64P()
        n = int(
            self._lib.cw_nodes(
                self._handle(),
                ctypes.byref(parent),
                ctypes.byref(name),
                ctypes.byref(count),
                ctypes.byref(nbytes),
            )
        )
        return [(parent[i], name[i], count[i], nbytes[i]) for i in range(n)]

    def stop(self) -> None:
        """Let go of every object the walk holds; the results stay."""
        if self._h is not None:
            self._lib.cw_stop(self._h)

    def free(self) -> None:
        handle, self._h = self._h, None
        if handle is not None:
            self._lib.cw_free(handle)
            self._owner.walkers -= 1

    def __del__(self) -> None:
        self.free()


class Library:
    """The loaded library's census functions."""

    def __init__(self, lib: Any) -> None:
        self._lib: Any = lib
        self.walkers = 0  # walks not freed yet: the library must stay while any is
        vp, i32, u64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_uint64
        obj = ctypes.py_object
        for name, restype, argtypes in (
            ("cw_abi", ctypes.c_int, []),
            ("cw_usable", ctypes.c_int, []),
            ("cw_pending", ctypes.c_int, []),
            ("cw_new", vp, [obj, obj, ctypes.c_int, u64, u64, i32, i32]),
            ("cw_stop", None, [vp]),
            ("cw_free", None, [vp]),
            ("cw_boundary", ctypes.c_int, [vp, u64]),
            ("cw_mark", ctypes.c_int, [vp, u64]),
            ("cw_marked", ctypes.c_int, [vp, u64]),
            ("cw_node", i32, [vp, i32, i32]),
            ("cw_add", None, [vp, i32, u64, u64]),
            ("cw_visit", None, [vp, obj, i32]),
            ("cw_push", ctypes.c_int, [vp, obj, i32]),
            ("cw_run", ctypes.c_int, [vp, u64]),
            ("cw_unmarked", ctypes.c_int64, [vp, obj, ctypes.c_int64, obj, u64]),
            ("cw_gc_unmarked", ctypes.c_int, [vp, obj]),
            ("cw_gc_begin", ctypes.c_int, [vp, obj, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                           u64]),
            ("cw_gc_step", ctypes.c_int, [vp, u64, u64]),
            ("cw_stats", None, [vp, _U64P]),
            ("cw_targets", ctypes.c_int, [vp, _U64P, u64]),
            ("cw_target_paths", None, [vp, _U64P, _I32P, u64]),
            ("cw_nodes", u64, [vp, ctypes.POINTER(_I32P), ctypes.POINTER(_I32P),
                               ctypes.POINTER(_U64P), ctypes.POINTER(_U64P)]),
        ):  # fmt: skip
            func = getattr(lib, name)
            func.restype = restype
            func.argtypes = argtypes

    def new(
        self,
        classify: Callable[[type], Tuple[int, Any, int, bool]],
        agent_class: Callable[[Any], bool],
        max_depth: int,
        max_paths: int,
        max_bytes: int,
        other_name: int,
        unknown_name: int,
    ) -> Optional[Walker]:
        """A new census walk. ``classify(type)`` answers, once per type: (name id, its C
        ``__sizeof__`` or None for object's, bytes ``sys.getsizeof`` adds, is a module
        type); ``agent_class(cls)``: whether the agent's own walk enters a class."""
        handle = self._lib.cw_new(
            classify, agent_class, max_depth, max_paths, max_bytes, other_name, unknown_name
        )
        return Walker(self._lib, handle, self) if handle else None

    def unload(self) -> bool:
        """dlclose this handle on the library, unless a walk was not freed or the main
        thread has yet to run a call a walk queued (either would jump into unmapped
        code): then it stays, and False."""
        lib = self._lib
        if lib is None:
            return True
        if lib.cw_pending() or self.walkers:
            return False
        self._lib = None
        handle = lib._handle
        del lib
        _ctypes.dlclose(handle)
        return True


def load(path: Optional[str]) -> Optional[Library]:
    """The census walk of the library at ``path``; None where it cannot serve."""
    if path is None:
        return None
    try:
        lib = ctypes.PyDLL(path)
        if lib.cw_abi() != ABI or not lib.cw_usable():
            return None
    except (OSError, AttributeError):
        return None
    return Library(lib)
