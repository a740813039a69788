"""ctypes binding of the native sampling shim (``Cargo-free/heapspy_shim.c``).

The shim hooks CPython's MEM and OBJ allocator domains, counts every allocation exactly
and samples about one per ``rate`` allocated bytes the way Go does, recording the Python
stack of each sampled block and accounting its free. This module is copied into target
processes: standard library only, Python 3.8 syntax, no other heapspy imports. Every
ctypes signature of the shim is declared here and nowhere else.

Usage::

    shim = Shim.load()                  # or Shim.load(path)
    shim.start(rate=512 * 1024, max_frames=64)
    ...
    d = shim.drain()                    # new stacks, changed stacks, totals
    shim.evict(2)                       # forget stacks freed and idle for 2 drains
    shim.stop()                         # False: hooks replaced by someone else, pinned
    shim.unload()                       # dlclose: nothing of the shim stays mapped

Stacks are returned root -> leaf (the C buffers hold them leaf first). Per-stack values
come raw and upscaled (``est_*``: Go's scale applied per sample); exact totals are never
upscaled. Frames are named from the code objects the shim holds until the stack is
evicted or ``stop()``: ``co_qualname`` on 3.11+, else ``co_name``.
"""

import _ctypes
import ctypes
import glob
import math
import os
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

ABI = 14
"""Must match HS_ABI in heapspy_shim.h."""
NATIVE_ABI = 2
"""Must match HS_NATIVE_ABI in native_hooks.h."""

LIBRARY_GLOB = "_heapspy_shim*.so"
NCLASSES = 65
NDOMAINS = 3  # MEM, OBJ, NumPy array data
DOM_MEM = 0
DOM_OBJ = 1
DOM_NUMPY = 2

# Return codes (heapspy_shim.h).
OK = 0
ERR_RUNNING = 1
ERR_NOT_RUNNING = 2
ERR_FREE_THREADED = 3
ERR_SYMBOLS = 4
ERR_VERSION = 5
ERR_SUBINTERP = 6
ERR_NOMEM = 7
ERR_HOOKS_LEFT = 8
ERR_ARG = 9
LEFT_INSTALLED = 10
ERR_HANDLER = 11
ERR_LAYOUT = 12
ERR_LOAD = 100  # binding-side: the library could not be found, loaded or unloaded

_FLAG_FREE_THREADED = 1

STACK_TRUNCATED = 1
STACK_OVERFLOW = 2
STACK_FOREIGN = 4
STACK_NATIVE = 8  # native samples without a Python stack (native_hooks.h)

NATIVE_RAW = 1  # hs_native_start flags: hook the RAW domain
NATIVE_GOT = 2  # redirect the allocator entries of loaded libraries
NATIVE_FRAMES = 4  # record each native sample's native call stack too
MAX_NATIVE_FRAMES = 32  # HS_NATIVE_MAX_FRAMES: return addresses per native sample

STATE_IDLE = 0
STATE_RUNNING = 1
STATE_LEFT = 2

DEFAULT_MAX_STACKS = 1 << 16
MAX_ANCHORS = 8  # HS_MAX_ANCHORS


class ShimError(Exception):
    """The shim refused or failed; ``code`` is one of the ``ERR_*`` constants."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Frame(NamedTuple):
    function: str  # co_qualname on 3.11+, else co_name
    filename: str
    line: int  # -1 when CPython does not know


class Stack(NamedTuple):
    stack_id: int
    frames: Tuple[Frame, ...]  # root -> leaf; empty: no Python frame (or overflow)
    flags: int  # STACK_* bits
    label: int = 0  # the label set of its samples (LabelSet.label_id); 0: none
    native: int = 0  # its native frames (Shim.native_frames), below the leaf; 0: none

    @property
    def truncated(self) -> bool:
        """Deeper than max_frames: the root-most frames are missing."""
        return bool(self.flags & STACK_TRUNCATED)

    @property
    def overflow(self) -> bool:
        """Stack 0: samples whose stack did not fit in the shim's tables."""
        return bool(self.flags & STACK_OVERFLOW)


class StackCounts(NamedTuple):
    """Current values of one stack (absolute, not deltas).

    The first four are raw sampled values; the ``est_`` ones are those upscaled by the
    shim, each sample weighing ``1 / (1 - exp(-size / rate))`` with the rate in force when
    it was taken: Go's estimator per allocation, unbiased even when one stack mixes sizes
    (Go keys its buckets on the size for that reason) or the rate changed.
    """

    stack_id: int
    alloc_count: int
    alloc_bytes: int
    live_count: int
    live_bytes: int
    est_alloc_count: float
    est_alloc_bytes: float
    est_live_count: float
    est_live_bytes: float
    # the variance of each estimate, summed per sample at its own rate: w (w - 1) for the
    # counts, w (w - 1) size**2 for the bytes, where w is the sample's weight
    var_alloc_count: float = 0.0
    var_alloc_bytes: float = 0.0
    var_live_count: float = 0.0
    var_live_bytes: float = 0.0


class DomainTotals(NamedTuple):
    """Exact counts for one allocator domain since start, at the requested sizes.

    A realloc counts as one free (of a non-NULL block) and one allocation of the new size;
    a failed realloc counts nothing, a failed malloc/calloc (out of memory) is counted.
    Allocations made by the shim's own stack captures are not counted.
    """

    alloc_count: int
    alloc_bytes: int
    free_count: int
    realloc_count: int
    size_classes: Tuple[int, ...]  # [k]: allocations with 2**(k-1) < size <= 2**k


class Totals(NamedTuple):
    state: int
    rate: int
    mem: DomainTotals
    obj: DomainTotals
    numpy: DomainTotals  # NumPy array data (all zero unless hook_numpy() succeeded)
    sampled_count: int
    sampled_bytes: int
    live_samples: int
    live_sampled_bytes: int
    dropped_samples: int  # pointer map full: counted as allocated, never as live
    overflow_samples: int  # attributed to stack 0
    stacks: int  # in the table now
    frames: int
    shim_memory: int  # bytes of libc memory the shim holds
    numpy_hooked: bool
    labels: int  # label sets interned
    # (native thread id, exact bytes it allocated since start), all domains, every
    # allocation; thread id 0 holds the threads beyond the shim's table (4096)
    threads: Tuple[Tuple[int, int], ...]
    evicted_stacks: int = 0  # evicted so far (Shim.evict)


class LabelSet(NamedTuple):
    """Who made the samples of the stacks that carry this id, as the shim saw it.

    ``thread_id`` is the native id of the allocating thread; ``coro`` the code object of
    the frame right above an anchor (``Shim.set_anchors``: asyncio's ``Handle._run``, a
    Python Task's step), i.e. the running task's coroutine, None outside a task; ``task``
    the slot the agent gave that task's coroutine frame in ``Shim.set_tasks``, 0 when it
    was not registered; ``name`` the C Task's name object read at sample time
    (``Shim.set_task_probe``: a str, or 3.13+'s int for a default name), None when it could
    not be read. Set 0 is the empty set (the label table was full).
    """

    label_id: int
    thread_id: int
    task: int
    coro: Any  # a code object, or None
    name: Any = None  # a str or an int, or None


class NativeTotals(NamedTuple):
    """Exact counts of the native domains (hs_native_report), and their samples.

    ``raw``: direct PyMem_RawMalloc & co (not what pymalloc forwards: MEM/OBJ saw those);
    ``malloc``: malloc & co called by redirected libraries; ``mmap``: their anonymous
    mappings. Failed calls are not counted. Size classes are not kept (all zero).
    """

    active: int  # bit 0: RAW hooked, bit 1: GOT entries redirected
    raw: DomainTotals
    malloc: DomainTotals
    mmap: DomainTotals
    sampled_count: int
    sampled_bytes: int
    live_samples: int
    live_sampled_bytes: int
    nogil_samples: int  # taken without a Python stack
    dropped_samples: int
    libraries: int  # libraries with redirected entries
    entries: int
    threads: int  # threads that allocated natively this session
    shim_memory: int


class NativeLibraries(NamedTuple):
    redirected: List[Tuple[str, int]]  # (path, entries redirected)
    skipped: List[Tuple[str, str]]  # (path, why)
    notes: List[str]  # process-wide


class Drain(NamedTuple):
    new_stacks: List[Stack]  # stacks interned since the previous drain
    changed: List[StackCounts]  # stacks whose counters changed since the previous drain
    totals: Totals
    new_labels: List[LabelSet]  # label sets interned since the previous drain


class LiveBlock(NamedTuple):
    """One live sampled block (hs_live_block)."""

    address: int  # what the hooked allocator returned
    size: int  # requested bytes
    stack_id: int
    domain: int  # DOM_MEM, DOM_OBJ or DOM_NUMPY
    weight: float  # 1 / P(sampled) when it was taken


class TypedRow(NamedTuple):
    """The live samples of one (stack, type) (hs_typed_row)."""

    stack_id: int
    type_index: int  # into the types given to classify_live(); -1: not an object
    live_count: int
    live_bytes: int
    est_live_count: float
    est_live_bytes: float


class _LiveBlock(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("stack", ctypes.c_uint32),
        ("domain", ctypes.c_uint32),
        ("weight", ctypes.c_double),
    ]


class _TypedRow(ctypes.Structure):
    _fields_ = [
        ("stack", ctypes.c_uint32),
        ("type", ctypes.c_int32),
        ("count", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("est_count", ctypes.c_double),
        ("est_bytes", ctypes.c_double),
    ]


class _Report(ctypes.Structure):
    """hs_report in heapspy_shim.h."""

    _fields_ = [
        ("abi", ctypes.c_uint64),
        ("state", ctypes.c_uint64),
        ("rate", ctypes.c_uint64),
        ("max_frames", ctypes.c_uint64),
        ("alloc_count", ctypes.c_uint64 * NDOMAINS),
        ("alloc_bytes", ctypes.c_uint64 * NDOMAINS),
        ("free_count", ctypes.c_uint64 * NDOMAINS),
        ("realloc_count", ctypes.c_uint64 * NDOMAINS),
        ("size_classes", (ctypes.c_uint64 * NCLASSES) * NDOMAINS),
        ("sampled_count", ctypes.c_uint64),
        ("sampled_bytes", ctypes.c_uint64),
        ("live_samples", ctypes.c_uint64),
        ("live_sampled_bytes", ctypes.c_uint64),
        ("dropped_samples", ctypes.c_uint64),
        ("overflow_samples", ctypes.c_uint64),
        ("stacks", ctypes.c_uint64),
        ("frames", ctypes.c_uint64),
        ("map_entries", ctypes.c_uint64),
        ("shim_memory", ctypes.c_uint64),
        ("numpy_hooked", ctypes.c_uint64),
        ("n_new", ctypes.c_uint64),
        ("new_stacks", ctypes.c_uint64),
        ("n_new_frames", ctypes.c_uint64),
        ("new_codes", ctypes.c_uint64),
        ("new_lines", ctypes.c_uint64),
        ("n_changed", ctypes.c_uint64),
        ("changed", ctypes.c_uint64),
        ("changed_est", ctypes.c_uint64),
        ("labels", ctypes.c_uint64),
        ("n_new_labels", ctypes.c_uint64),
        ("new_labels", ctypes.c_uint64),
        ("new_label_codes", ctypes.c_uint64),
        ("n_threads", ctypes.c_uint64),
        ("threads", ctypes.c_uint64),
        ("changed_var", ctypes.c_uint64),
        ("evicted_stacks", ctypes.c_uint64),
    ]


_NATIVE_DOMAINS = 3


class _NativeReport(ctypes.Structure):
    """hs_native_report in native_hooks.h."""

    _fields_ = [
        ("abi", ctypes.c_uint64),
        ("active", ctypes.c_uint64),
        ("alloc_count", ctypes.c_uint64 * _NATIVE_DOMAINS),
        ("alloc_bytes", ctypes.c_uint64 * _NATIVE_DOMAINS),
        ("free_count", ctypes.c_uint64 * _NATIVE_DOMAINS),
        ("realloc_count", ctypes.c_uint64 * _NATIVE_DOMAINS),
        ("sampled_count", ctypes.c_uint64),
        ("sampled_bytes", ctypes.c_uint64),
        ("live_samples", ctypes.c_uint64),
        ("live_sampled_bytes", ctypes.c_uint64),
        ("nogil_samples", ctypes.c_uint64),
        ("dropped_samples", ctypes.c_uint64),
        ("libraries", ctypes.c_uint64),
        ("entries", ctypes.c_uint64),
        ("threads", ctypes.c_uint64),
        ("shim_memory", ctypes.c_uint64),
    ]


def scale_heap_sample(count: int, size: int, rate: int) -> Tuple[int, int]:
    """Go's pprof estimator: upscale sampled (count, bytes) of one stack to the truth.

    An allocation of ``avg = size / count`` bytes is sampled with probability
    ``1 - exp(-avg / rate)``; divide by it. ``rate <= 1`` means everything was recorded.
    """
    if count == 0 or size == 0:
        return 0, 0
    if rate <= 1:
        return count, size
    avg = size / count
    scale = 1.0 / (1.0 - math.exp(-avg / rate))
    return int(count * scale), int(size * scale)


def shim_path() -> Optional[str]:
    """The built shim library, or None when it was not built.

    Looks next to this module first (installed package, in-place or editable build, a
    copy of the agent folder), then in setuptools' build output of a source checkout.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    patterns = [
        os.path.join(here, LIBRARY_GLOB),
        # source checkout: agent/heapspy_agent/ -> build/lib.*/heapspy_agent/
        os.path.join(
            os.path.dirname(os.path.dirname(here)), "build", "lib*", "heapspy_agent", LIBRARY_GLOB
        ),
    ]
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def _is_free_threaded() -> bool:
    # "t" marks a free-threaded build's ABI (3.13+). Read from sys, not sysconfig, whose
    # get_config_var imports _sysconfigdata_* the first time: the agent imports nothing
    # once it runs, since the target may be importing (see heapspy/inject/boot_script.py).
    return "t" in getattr(sys, "abiflags", "")


def _walk_probe() -> "Tuple[Any, int]":
    """A code object with instructions before its RESUME, and how many code units they
    are: the shim reads that count where 3.11+ keeps it (_co_firsttraceable) to check the
    offset. RESUME's opcode is the first byte of a function with no cells."""

    def plain() -> None:
        pass

    def probe() -> "Callable[[], int]":
        cell = 0  # a cell: MAKE_CELL comes before RESUME

        def inner() -> int:
            return cell

        return inner

    resume = plain.__code__.co_code[0]
    code = probe.__code__.co_code
    first = next((i // 2 for i in range(0, len(code), 2) if code[i] == resume), 0)
    return probe.__code__, first


def _verify_walk(lib: "ctypes.PyDLL") -> int:
    """Have the shim compare its in-place walk of this stack with the frame API's (see
    hs_walk_verify), called from a generator's frame through map(), a C function calling
    back into Python: the frames a walk must skip or keep are on the stack it checks."""
    if sys.version_info < (3, 11):
        return 0
    code, first = _walk_probe()

    def leaf(_: int) -> int:
        return int(lib.hs_walk_verify(code, first))

    def steps() -> "Iterator[int]":
        yield sum(map(leaf, (0,)))

    return next(steps())


class Shim:
    """One loaded copy of the shim library in this process.

    All calls hold the GIL (ctypes.PyDLL), so installing hooks cannot race other
    threads; a lock additionally serialises callers of this object.
    """

    def __init__(self, lib: "ctypes.PyDLL", path: str) -> None:
        self.path = path
        self._lib: Optional[ctypes.PyDLL] = lib
        self._lock = threading.Lock()
        self._names: Dict[int, Tuple[str, str]] = {}
        self._qualname = sys.version_info >= (3, 11)
        lib.hs_abi.restype = ctypes.c_int
        lib.hs_abi.argtypes = []
        lib.hs_report_size.restype = ctypes.c_int
        lib.hs_report_size.argtypes = []
        lib.hs_start.restype = ctypes.c_int
        lib.hs_start.argtypes = [
            ctypes.c_uint64,  # rate
            ctypes.c_int,  # max_frames
            ctypes.c_uint64,  # max_stacks
            ctypes.c_uint64,  # seed
            ctypes.c_uint,  # flags
        ]
        lib.hs_set_rate.restype = ctypes.c_int
        lib.hs_set_rate.argtypes = [ctypes.c_uint64]
        lib.hs_stop.restype = ctypes.c_int
        lib.hs_stop.argtypes = []
        lib.hs_state.restype = ctypes.c_int
        lib.hs_state.argtypes = []
        lib.hs_walk_verify.restype = ctypes.c_int
        lib.hs_walk_verify.argtypes = [ctypes.py_object, ctypes.c_int]
        lib.hs_walk_state.restype = ctypes.c_int
        lib.hs_walk_state.argtypes = []
        lib.hs_walk_check.restype = None
        lib.hs_walk_check.argtypes = [
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_uint64),
            ctypes.POINTER(ctypes.c_uint64),
        ]
        lib.hs_read.restype = ctypes.c_int
        lib.hs_read.argtypes = [ctypes.POINTER(_Report), ctypes.c_int]
        lib.hs_evict.restype = ctypes.c_int
        lib.hs_evict.argtypes = [
            ctypes.c_uint64,  # min_idle
            ctypes.POINTER(ctypes.c_uint64),  # number of ids
            ctypes.POINTER(ctypes.c_uint64),  # address of the ids (uint32)
        ]
        lib.hs_strerror.restype = ctypes.c_char_p
        lib.hs_strerror.argtypes = [ctypes.c_int]
        lib.hs_numpy_hook.restype = ctypes.c_int
        lib.hs_numpy_hook.argtypes = [ctypes.c_void_p]
        lib.hs_numpy_inflight.restype = ctypes.c_int
        lib.hs_numpy_inflight.argtypes = []
        lib.hs_live_blocks.restype = ctypes.c_int64
        lib.hs_live_blocks.argtypes = [
            ctypes.POINTER(_LiveBlock),
            ctypes.c_uint64,
            ctypes.POINTER(ctypes.c_uint64),
        ]
        lib.hs_layout_init.restype = ctypes.c_int
        lib.hs_layout_init.argtypes = [ctypes.c_int, ctypes.c_uint64]
        u64s = ctypes.POINTER(ctypes.c_uint64)
        lib.hs_types_set.restype = ctypes.c_int
        lib.hs_types_set.argtypes = [u64s, u64s, u64s, ctypes.c_uint64]
        lib.hs_types_clear.restype = None
        lib.hs_types_clear.argtypes = []
        lib.hs_classify_live.restype = ctypes.c_int
        lib.hs_classify_live.argtypes = [ctypes.POINTER(ctypes.POINTER(_TypedRow)), u64s]
        lib.hs_block_type.restype = ctypes.c_int64
        lib.hs_block_type.argtypes = [ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint32, u64s]
        lib.hs_object_block.restype = ctypes.c_uint64
        lib.hs_object_block.argtypes = [ctypes.c_uint64]
        self._layout = False
        self.native = False  # this build has native hooks of our ABI
        if getattr(lib, "hs_native_abi", None) is not None:
            lib.hs_native_abi.restype = ctypes.c_int
            lib.hs_native_abi.argtypes = []
            lib.hs_native_report_size.restype = ctypes.c_int
            lib.hs_native_report_size.argtypes = []
            self.native = (
                lib.hs_native_abi() == NATIVE_ABI
                and lib.hs_native_report_size() == ctypes.sizeof(_NativeReport)
            )
        if self.native:
            for name, res, args in (
                ("hs_native_start", ctypes.c_int, [ctypes.c_uint]),
                ("hs_native_rescan", ctypes.c_int, []),
                ("hs_native_stop", ctypes.c_int, []),
                ("hs_native_read", ctypes.c_int, [ctypes.POINTER(_NativeReport)]),
                ("hs_native_libraries", ctypes.c_size_t, [ctypes.c_char_p, ctypes.c_size_t]),
                ("hs_native_pinned", ctypes.c_int, []),
                (
                    "hs_native_frames",
                    ctypes.c_int,
                    [ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint64), ctypes.c_int],
                ),
            ):
                fn = getattr(lib, name)
                fn.restype = res
                fn.argtypes = args
        lib.hs_set_anchors.restype = ctypes.c_int
        lib.hs_set_anchors.argtypes = [ctypes.POINTER(ctypes.py_object), ctypes.c_int]
        lib.hs_set_tasks.restype = ctypes.c_int
        lib.hs_set_tasks.argtypes = [
            ctypes.c_uint64,
            ctypes.POINTER(ctypes.c_uint64),  # coroutine frames (addresses)
            ctypes.POINTER(ctypes.c_uint64),  # their code objects (addresses)
            ctypes.POINTER(ctypes.c_uint32),  # the slot of each task's name (>= 1)
        ]
        lib.hs_set_task_probe.restype = ctypes.c_int
        lib.hs_set_task_probe.argtypes = [
            ctypes.c_int64,  # frame object -> interpreter frame, -1: locals inline
            ctypes.c_int64,  # the first local from there
            ctypes.py_object,  # asyncio.events.Handle
            ctypes.c_int64,  # Handle._callback
            ctypes.py_object,  # _asyncio.Task
            ctypes.c_int64,  # its name
            ctypes.py_object,  # str
            ctypes.py_object,  # int
            ctypes.c_int64,  # a compact ASCII str's characters, -1: unknown
        ]
        lib.hs_set_wakeup_probe.restype = ctypes.c_int
        lib.hs_set_wakeup_probe.argtypes = [
            ctypes.py_object,  # the wakeup callback's exact type
            ctypes.c_int64,  # its task
            ctypes.c_int64,  # its method definition, -1: none to check
            ctypes.c_void_p,  # task_wakeup's method definition
        ]
        park = getattr(lib, "hs_park", None)  # absent from an older build
        if park is not None:
            park.restype = ctypes.c_int
            park.argtypes = [ctypes.c_int]
        stats = getattr(lib, "hs_pymalloc_stats", None)  # absent from an older build
        if stats is not None:
            stats.restype = ctypes.c_int
            stats.argtypes = [ctypes.c_void_p]

    @classmethod
    def load(cls, path: Optional[str] = None) -> "Shim":
        """Load the library (default: :func:`shim_path`); ShimError(ERR_LOAD) if absent."""
        if path is None:
            path = shim_path()
            if path is None:
                raise ShimError("the sampling shim was not built", ERR_LOAD)
        try:
            lib = ctypes.PyDLL(path)
        except OSError as exc:
            raise ShimError(f"cannot load the sampling shim {path}: {exc}", ERR_LOAD) from exc
        try:
            abi = lib.hs_abi()
            size = lib.hs_report_size()
        except AttributeError:
            raise ShimError(f"{path} is not a heapspy shim of this version", ERR_LOAD) from None
        if abi != ABI or size != ctypes.sizeof(_Report):
            raise ShimError(
                f"shim {path} has ABI {abi} (report {size} bytes), this agent needs ABI {ABI} "
                f"({ctypes.sizeof(_Report)} bytes): rebuild it",
                ERR_LOAD,
            )
        return cls(lib, path)

    def _c(self) -> "ctypes.PyDLL":
        if self._lib is None:
            raise ShimError("the sampling shim was unloaded", ERR_LOAD)
        return self._lib

    def _check(self, rc: int) -> None:
        if rc != OK:
            msg = self._c().hs_strerror(rc)
            raise ShimError(msg.decode() if msg else f"error {rc}", rc)

    def pymalloc_stats(self, stream: int) -> int:
        """pymalloc's statistics into a FILE* (memstats.py): through the shim, which
        steps its hook aside for the call; 0 from a shim built without it."""
        func = getattr(self._c(), "hs_pymalloc_stats", None)
        return 0 if func is None else int(func(stream))

    @property
    def state(self) -> int:
        """STATE_IDLE, STATE_RUNNING, or STATE_LEFT (stopped but pinned)."""
        return int(self._c().hs_state())

    def start(
        self,
        rate: int,
        max_frames: int = 64,
        max_stacks: int = DEFAULT_MAX_STACKS,
        seed: int = 0,
        free_threaded: Optional[bool] = None,
        walk_in_place: bool = True,
    ) -> None:
        """Install the hooks on MEM and OBJ in one C call and start counting.

        ``rate``: mean bytes between samples (0: exact totals only, 1: every allocation).
        ``seed``: 0 picks one. ``free_threaded``: None detects it. ``walk_in_place``:
        False keeps samples on the frame API (tests compare the two walks).
        """
        if rate < 0 or max_frames < 1 or max_stacks < 2 or seed < 0:
            raise ShimError("invalid argument", ERR_ARG)
        if free_threaded is None:
            free_threaded = _is_free_threaded()
        flags = _FLAG_FREE_THREADED if free_threaded else 0
        with self._lock:
            self._names.clear()
            lib = self._c()
            if walk_in_place and not free_threaded and not hasattr(sys, "gettotalrefcount"):
                self._check(_verify_walk(lib))  # not in a debug build: other layouts
            else:
                self._check(lib.hs_walk_verify(None, 0))  # off
            self._check(lib.hs_start(rate, max_frames, max_stacks, seed, flags))

    def walk_check(self, on: bool) -> Tuple[int, int]:
        """Tests only: from now on, have every in-place capture also walk the frames
        through the API (``on``); the captures compared so far and those that differed."""
        checked, differ = ctypes.c_uint64(0), ctypes.c_uint64(0)
        with self._lock:
            self._c().hs_walk_check(int(on), ctypes.byref(checked), ctypes.byref(differ))
        return checked.value, differ.value

    @property
    def walks_in_place(self) -> bool:
        """Whether samples read the frames in place (3.11+, ``_verify_walk`` passed)
        rather than through the frame API, which makes frame objects."""
        return bool(self._c().hs_walk_state())

    def after_fork_in_child(self) -> None:
        """Forget the parent's lock: call first thing in a forked child, before any other
        method. Another thread of the parent (the agent's, mid-drain) may have held it at
        the fork, and that thread does not exist here: the child would wait forever. The
        child runs one thread, so a fresh lock is all the serialising it needs."""
        self._lock = threading.Lock()

    def set_rate(self, rate: int) -> None:
        """Change the mean sampling distance of the running session."""
        if rate < 0:
            raise ShimError("invalid argument", ERR_ARG)
        with self._lock:
            self._check(self._c().hs_set_rate(rate))

    def park(self, parked: bool) -> None:
        """Benchmarks only (benchmarks/session_cost.py): take the hooks out or put them
        back, the session's tables kept. Frees made while parked are not seen."""
        with self._lock:
            self._check(self._c().hs_park(1 if parked else 0))

    def stop(self) -> bool:
        """Remove the hooks and release every table and code-object reference.

        Returns False when another allocator had replaced our hooks: they stay installed
        as pass-throughs (restoring could point at freed state), the library stays pinned,
        and a later ``stop()`` retries. Drain first: per-stack data is gone afterwards;
        totals stay readable until the next start.
        """
        with self._lock:
            rc = self._c().hs_stop()
            self._names.clear()
            if rc == LEFT_INSTALLED:
                return False
            self._check(rc)
            return True

    def set_anchors(self, codes: List[Any]) -> None:
        """The code objects right below a task's coroutine frame (at most MAX_ANCHORS);
        the caller keeps them alive. Only while running; ``stop()`` forgets them."""
        codes = codes[:MAX_ANCHORS]
        with self._lock:
            arr = (ctypes.py_object * max(1, len(codes)))(*codes)
            self._check(self._c().hs_set_anchors(arr, len(codes)))

    def set_tasks(self, tasks: List[Tuple[int, int, int]]) -> None:
        """Replace the shim's table of tasks: (``id`` of the coroutine's frame, ``id`` of
        its code object, the slot (>= 1) of the task's name). A sample whose coroutine
        frame is in the table gets that slot in its label set (LabelSet.task)."""
        n = len(tasks)
        frames = (ctypes.c_uint64 * max(1, n))(*(t[0] for t in tasks))
        codes = (ctypes.c_uint64 * max(1, n))(*(t[1] for t in tasks))
        slots = (ctypes.c_uint32 * max(1, n))(*(t[2] for t in tasks))
        with self._lock:
            self._check(self._c().hs_set_tasks(n, frames, codes, slots))

    def set_task_probe(
        self, offsets: Tuple[int, int, int, int, int], handle: Any, task: Any
    ) -> None:
        """Have the shim read the running C Task's name at every sample (see
        ``labels.task_probe``: offsets of a frame's interpreter frame, its first local,
        Handle._callback, the Task's name, a compact ASCII str's characters or -1); the
        caller keeps both classes alive."""
        f_frame, local0, callback, name, ascii_data = offsets
        with self._lock:
            self._check(
                self._c().hs_set_task_probe(
                    f_frame, local0, handle, callback, task, name, str, int, ascii_data
                )
            )

    def set_wakeup_probe(self, probe: Tuple[Any, int, int, int]) -> None:
        """Have the shim also find the task in its wakeup callback (``labels.wakeup_probe``:
        the callback's type, the offset of its task, of its method definition or -1, that
        definition); the caller keeps the type alive."""
        wakeup, task, ml_off, ml = probe
        with self._lock:
            self._check(self._c().hs_set_wakeup_probe(wakeup, task, ml_off, ml or None))

    def hook_numpy(self) -> str:
        """Route NumPy's array data (default allocator handler) through the shim.

        Call after ``start()``; ``stop()`` restores NumPy. Never imports NumPy: returns
        "" when it is hooked, else why not (not imported, too old, another handler).
        """
        handler = _numpy_default_handler()
        if isinstance(handler, str):
            return handler
        with self._lock:
            rc = self._c().hs_numpy_hook(handler)
            if rc == OK:
                return ""
            msg = self._c().hs_strerror(rc)
            return msg.decode() if msg else f"error {rc}"

    def native_start(self, raw: bool = True, got: bool = True, frames: bool = False) -> None:
        """Sample native allocations too (after ``start()``): the RAW domain and/or the
        allocator entries of the loaded libraries; with ``frames``, each sample's native
        call stack as well (``Stack.native``). ``stop()`` takes them out again.
        From then on the library stays loaded for the life of the process (see
        ``pinned``). What was redirected and skipped: ``native_libraries()``."""
        if not self.native:
            raise ShimError("this shim build has no native hooks", ERR_LOAD)
        flags = (NATIVE_RAW if raw else 0) | (NATIVE_GOT if got else 0)
        flags |= NATIVE_FRAMES if frames else 0
        with self._lock:
            self._check(self._c().hs_native_start(flags))

    def native_frames(self, native_id: int) -> Tuple[int, ...]:
        """The return addresses of a stack's native frames (``Stack.native``), leaf
        first: the caller of the allocator, then its callers where frame pointers lead."""
        if not self.native or not native_id:
            return ()
        out = (ctypes.c_uint64 * MAX_NATIVE_FRAMES)()
        with self._lock:
            n = int(self._c().hs_native_frames(native_id, out, MAX_NATIVE_FRAMES))
        return tuple(out[: max(0, min(n, MAX_NATIVE_FRAMES))])

    def native_rescan(self) -> None:
        """Redirect the libraries loaded since the last scan (a late import, dlopen)."""
        if self.native:
            with self._lock:
                self._c().hs_native_rescan()

    def native_totals(self) -> Optional[NativeTotals]:
        """The native domains' exact counts; None from a build without native hooks."""
        if not self.native:
            return None
        with self._lock:
            rep = _NativeReport()
            self._check(self._c().hs_native_read(ctypes.byref(rep)))
        dom = [
            DomainTotals(
                rep.alloc_count[i],
                rep.alloc_bytes[i],
                rep.free_count[i],
                rep.realloc_count[i],
                (0,) * NCLASSES,
            )
            for i in range(_NATIVE_DOMAINS)
        ]
        return NativeTotals(
            rep.active,
            dom[0],
            dom[1],
            dom[2],
            rep.sampled_count,
            rep.sampled_bytes,
            rep.live_samples,
            rep.live_sampled_bytes,
            rep.nogil_samples,
            rep.dropped_samples,
            rep.libraries,
            rep.entries,
            rep.threads,
            rep.shim_memory,
        )

    def native_libraries(self) -> NativeLibraries:
        """Which libraries had their allocator entries redirected, which not and why."""
        out = NativeLibraries([], [], [])
        if not self.native:
            return out
        with self._lock:
            lib = self._c()
            need = int(lib.hs_native_libraries(None, 0))
            buf = ctypes.create_string_buffer(need + 1)
            lib.hs_native_libraries(buf, need + 1)
        for line in buf.value.decode("utf-8", "replace").splitlines():
            parts = line.split("\t", 2)
            if len(parts) != 3:
                continue
            kind, path, rest = parts
            if kind == "R":
                out.redirected.append((path, int(rest) if rest.isdigit() else 0))
            elif kind == "S":
                out.skipped.append((path, rest))
            elif kind == "N":
                out.notes.append(rest)
        return out

    @property
    def pinned(self) -> bool:
        """Native hooks were installed in this process once: never dlclose the library
        (a thread without the GIL may be inside one, another tool may chain to one)."""
        return self.native and bool(self._c().hs_native_pinned())

    def unload(self, wait: float = 5.0) -> None:
        """dlclose the library. Only after a clean stop: nothing of it stays mapped.

        A thread may still be inside the NumPy calloc hook without the GIL for up to
        ``wait`` seconds (a big zeroed array); the library stays loaded if it still is.
        """
        deadline = time.monotonic() + wait
        while self._c().hs_numpy_inflight() and time.monotonic() < deadline:
            time.sleep(0.001)  # releases the GIL: that thread can finish its call
        with self._lock:
            lib = self._c()
            if lib.hs_numpy_inflight():
                raise ShimError(
                    "cannot unload the shim: a thread is still inside its NumPy hook",
                    ERR_HOOKS_LEFT,
                )
            state = lib.hs_state()
            if state == STATE_RUNNING:
                raise ShimError("cannot unload the shim while it runs", ERR_RUNNING)
            if state != STATE_IDLE:
                raise ShimError(
                    "cannot unload the shim: its hooks are still installed", ERR_HOOKS_LEFT
                )
            handle = lib._handle
            self._lib = None
            if self.native and lib.hs_native_pinned():
                return  # stays loaded: its hooks pass straight through from now on
            del lib
            _ctypes.dlclose(handle)

    def totals(self) -> Totals:
        """Exact totals and table sizes, without consuming the drain state."""
        with self._lock:
            rep = _Report()
            self._check(self._c().hs_read(ctypes.byref(rep), 0))
            return _totals(rep)

    def drain(self) -> Drain:
        """Everything that changed since the previous drain (or start)."""
        with self._lock:
            rep = _Report()
            self._check(self._c().hs_read(ctypes.byref(rep), 1))
            # Copy out of the shim's buffers now: they live until the next drain/stop.
            n, nf, nc = rep.n_new, rep.n_new_frames, rep.n_changed
            hdr = _array(ctypes.c_uint64, 4 * n, rep.new_stacks)
            codes = _array(ctypes.c_void_p, nf, rep.new_codes)  # addresses (see _frame)
            lines = _array(ctypes.c_int64, nf, rep.new_lines)
            flat = _array(ctypes.c_uint64, 5 * nc, rep.changed)
            est = _array(ctypes.c_double, 4 * nc, rep.changed_est)
            var = _array(ctypes.c_double, 4 * nc, rep.changed_var)
            stacks = []
            pos = 0
            for i in range(0, 4 * n, 4):
                depth = hdr[i + 1]
                frames = tuple(
                    self._frame(codes[j], lines[j]) for j in range(pos + depth - 1, pos - 1, -1)
                )
                # flags: STACK_* in the low half, the native frames' id in the high one
                flags = hdr[i + 2]
                stacks.append(Stack(hdr[i], frames, flags & 0xFFFFFFFF, hdr[i + 3], flags >> 32))
                pos += depth
            nl = rep.n_new_labels
            sets = _array(ctypes.c_uint64, 4 * nl, rep.new_labels)
            label_codes = _array(ctypes.c_void_p, nl, rep.new_label_codes)
            labels = [
                LabelSet(
                    sets[4 * i],
                    sets[4 * i + 1],
                    sets[4 * i + 2],
                    # the shim holds a reference to each code and name until stop()
                    ctypes.cast(label_codes[i], ctypes.py_object).value if label_codes[i] else None,
                    _object_at(sets[4 * i + 3]),
                )
                for i in range(nl)
            ]
            changed = [
                StackCounts(
                    *flat[5 * i : 5 * i + 5], *est[4 * i : 4 * i + 4], *var[4 * i : 4 * i + 4]
                )
                for i in range(nc)
            ]
            return Drain(stacks, changed, _totals(rep), labels)

    def live_blocks(self, chunk: int = 65536) -> List[LiveBlock]:
        """Every live sampled block (a copy; blocks freed meanwhile may still be listed)."""
        out: List[LiveBlock] = []
        buf = (_LiveBlock * chunk)()
        cursor = ctypes.c_uint64(0)
        while True:
            with self._lock:
                n = int(self._c().hs_live_blocks(buf, chunk, ctypes.byref(cursor)))
            if n < 0:
                self._check(-n)
            if n <= 0:
                return out
            out.extend(LiveBlock(b.addr, b.size, b.stack, b.domain, b.weight) for b in buf[:n])

    def _init_layout(self) -> None:
        # offsetof(PyObject, ob_type): object's instance is just the PyObject header
        # (16 bytes, 32 with Py_TRACE_REFS) and ob_type is its last word.
        if not self._layout:
            ob_type_off = object.__basicsize__ - ctypes.sizeof(ctypes.c_void_p)
            self._check(self._c().hs_layout_init(sys.version_info[1], ob_type_off))
            self._layout = True

    def classify_live(self, types: List[type], min_sizes: List[int]) -> List[TypedRow]:
        """Every live sampled block's type, summed per (stack, type) in one C call.

        ``types``: the only type objects a block may be recognised as (held here for the
        call); ``min_sizes[i]``: the fewest bytes an instance of ``types[i]`` has (its
        ``__basicsize__``, an empty ``str``'s size for ``str``). Blocks that hold none of
        them come back with ``type_index`` -1. See Cargo-free/object_layout.c.
        """
        n = len(types)
        addrs = (ctypes.c_uint64 * n)(*[id(t) for t in types])
        flags = (ctypes.c_uint64 * n)(*[_type_flags(t) for t in types])
        sizes = (ctypes.c_uint64 * n)(*min_sizes)
        rows = ctypes.POINTER(_TypedRow)()
        count = ctypes.c_uint64(0)
        with self._lock:
            lib = self._c()
            self._init_layout()
            self._check(lib.hs_types_set(addrs, flags, sizes, n))
            try:
                rc = lib.hs_classify_live(ctypes.byref(rows), ctypes.byref(count))
                self._check(rc)
                return [
                    TypedRow(r.stack, r.type, r.count, r.bytes, r.est_count, r.est_bytes)
                    for r in rows[: count.value]
                ]
            finally:
                lib.hs_types_clear()

    def block_types(
        self, blocks: List[Tuple[int, int, int]], types: List[type], min_sizes: List[int]
    ) -> List[int]:
        """For each (address, size, domain), the index in ``types`` of the object that
        block holds, or -1: the check classify_live makes, on chosen blocks (for tests)."""
        n = len(types)
        addrs = (ctypes.c_uint64 * n)(*[id(t) for t in types])
        flags = (ctypes.c_uint64 * n)(*[_type_flags(t) for t in types])
        sizes = (ctypes.c_uint64 * n)(*min_sizes)
        with self._lock:
            lib = self._c()
            self._init_layout()
            self._check(lib.hs_types_set(addrs, flags, sizes, n))
            try:
                return [int(lib.hs_block_type(a, z, d, None)) for a, z, d in blocks]
            finally:
                lib.hs_types_clear()

    def block_objects(
        self, blocks: List[Tuple[int, int, int]], types: List[type], min_sizes: List[int]
    ) -> List[int]:
        """For each (address, size, domain), the address of the object that block holds
        (where it starts: after its gc header and pre-header), or 0 when it holds none
        of ``types``: classify_live's check, for the retainers' chosen blocks."""
        n = len(types)
        addrs = (ctypes.c_uint64 * n)(*[id(t) for t in types])
        flags = (ctypes.c_uint64 * n)(*[_type_flags(t) for t in types])
        sizes = (ctypes.c_uint64 * n)(*min_sizes)
        found = ctypes.c_uint64(0)
        out: List[int] = []
        with self._lock:
            lib = self._c()
            self._init_layout()
            self._check(lib.hs_types_set(addrs, flags, sizes, n))
            try:
                for a, z, d in blocks:
                    found.value = 0
                    index = int(lib.hs_block_type(a, z, d, ctypes.byref(found)))
                    out.append(found.value if index >= 0 else 0)
            finally:
                lib.hs_types_clear()
        return out

    def object_block(self, obj: object) -> int:
        """Where the allocation block of a live object starts."""
        with self._lock:
            self._init_layout()
            return int(self._c().hs_object_block(id(obj)))

    def evict(self, min_idle: int) -> List[int]:
        """Evict the stacks with nothing live, already drained, and unchanged for more
        than ``min_idle`` drains; their ids (reused by later drains' new stacks: forget
        them first). Drain first: the evicted stacks' last counters come from it."""
        with self._lock:
            n, address = ctypes.c_uint64(0), ctypes.c_uint64(0)
            self._check(self._c().hs_evict(min_idle, ctypes.byref(n), ctypes.byref(address)))
            ids = _array(ctypes.c_uint32, n.value, address.value)
            if ids:
                # their code objects may be gone, and their addresses reused
                self._names.clear()
            return ids

    def _frame(self, address: int, line: int) -> Frame:
        # Keyed by address: the shim holds a reference to every code object it hands out
        # until the stack is evicted or stop(), and the cache is cleared at both.
        names = self._names.get(address)
        if names is None:
            code = _object_at(address)
            name = code.co_qualname if self._qualname else code.co_name
            names = self._names[address] = (str(name), str(code.co_filename))
        return Frame(names[0], names[1], int(line))


# C getters of type: no metaclass property can stand in for them.
_type_flags = type.__dict__["__flags__"].__get__

NOT_IMPORTED = "NumPy is not imported"

# NumPy's C-API table index of PyDataMem_GetHandler (numpy/__multiarray_api.h, >= 1.22).
_NP_GET_HANDLER = 305


def _numpy_default_handler() -> "int | str":
    """Address of NumPy's default PyDataMem_Handler, or why there is none to hook.

    Through NumPy's own C-API table: PyDataMem_GetHandler() in this thread, whose context
    has never set a handler, returns the default handler's capsule.
    """
    numpy = sys.modules.get("numpy")
    if numpy is None or getattr(getattr(numpy, "__spec__", None), "_initializing", False):
        return NOT_IMPORTED  # absent, or another thread is importing it right now
    umath = sys.modules.get("numpy._core._multiarray_umath") or sys.modules.get(
        "numpy.core._multiarray_umath"
    )
    if umath is None:
        return NOT_IMPORTED
    version = str(getattr(numpy, "__version__", "0"))
    try:
        if tuple(int(x) for x in version.split(".")[:2]) < (1, 22):
            return f"NumPy {version} has no allocator handler API (1.22+)"
    except ValueError:
        pass
    api = getattr(umath, "_ARRAY_API", None)
    if api is None:
        return "NumPy's C-API table was not found in %s" % umath.__name__
    # A private prototype: setting restype on ctypes.pythonapi's shared attribute would
    # change it for the target's own code.
    capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
        ("PyCapsule_GetPointer", ctypes.pythonapi)
    )
    table = capsule_pointer(api, None)
    if not table:
        return "NumPy's C-API table is empty"
    entry = ctypes.c_void_p.from_address(table + _NP_GET_HANDLER * ctypes.sizeof(ctypes.c_void_p))
    if not entry.value:
        return "NumPy's C-API table has no PyDataMem_GetHandler"
    get_handler = ctypes.PYFUNCTYPE(ctypes.py_object)(entry.value)
    capsule = get_handler()
    handler = capsule_pointer(capsule, b"mem_handler")
    if not handler:
        return "NumPy's allocator handler was not found"
    return int(handler)


# struct formats of the shim's plain arrays: copied through a memoryview, as a ctypes
# array of n items would need a new array type for each n, made at every drain (and
# kept in ctypes' cache): 1-2 ms a drain under tracemalloc (exact mode's label samples)
_FORMATS = {
    ctypes.c_uint64: "Q",
    ctypes.c_int64: "q",
    ctypes.c_uint32: "I",
    ctypes.c_double: "d",
    ctypes.c_void_p: "P",  # NULL reads 0, not None
}


def _array(ctype: Any, n: int, address: int) -> List[Any]:
    """Copy n items of ctype at address (a shim buffer) into a list."""
    if n == 0:
        return []
    fmt = _FORMATS.get(ctype)
    if fmt is not None:
        raw = memoryview(ctypes.string_at(address, n * ctypes.sizeof(ctype)))  # type: Any
        items = raw.cast(fmt).tolist()  # type: List[Any]
        return items
    return list((ctype * n).from_address(address))


def _object_at(address: int) -> Any:
    """The object at address (one the shim holds a reference to), None for 0."""
    return ctypes.cast(address, ctypes.py_object).value if address else None


def _domain(rep: _Report, i: int) -> DomainTotals:
    return DomainTotals(
        rep.alloc_count[i],
        rep.alloc_bytes[i],
        rep.free_count[i],
        rep.realloc_count[i],
        tuple(rep.size_classes[i]),
    )


def _totals(rep: _Report) -> Totals:
    return Totals(
        state=rep.state,
        rate=rep.rate,
        mem=_domain(rep, 0),
        obj=_domain(rep, 1),
        numpy=_domain(rep, 2),
        sampled_count=rep.sampled_count,
        sampled_bytes=rep.sampled_bytes,
        live_samples=rep.live_samples,
        live_sampled_bytes=rep.live_sampled_bytes,
        dropped_samples=rep.dropped_samples,
        overflow_samples=rep.overflow_samples,
        stacks=rep.stacks,
        frames=rep.frames,
        shim_memory=rep.shim_memory,
        numpy_hooked=bool(rep.numpy_hooked),
        labels=rep.labels,
        threads=tuple(
            (flat[i], flat[i + 1])
            for flat in [_array(ctypes.c_uint64, 2 * rep.n_threads, rep.threads)]
            for i in range(0, len(flat), 2)
        ),
        evicted_stacks=rep.evicted_stacks,
    )
