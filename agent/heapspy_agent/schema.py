"""What each frame of the wire protocol carries, defined once for both ends.

Each message is a ``Record`` of typed, bounded fields. heapspy calls ``check`` on every
frame it receives: the agent runs inside a process heapspy does not trust (a target can
pre-load its own module named ``heapspy_agent``), so a frame is refused unless every
field has its type and stays within its range and size; anything else is a
``ProtocolError``, which ends the session. Keys a message does not define are dropped,
so nothing unchecked is kept. The agent builds its messages within the same limits
(``clip_text``, ``fit_samples``), so a genuine agent never trips them.

Plain classes, no ``dataclasses`` or run-time ``typing``: this module is imported inside
the target, where the agent imports as little as it can.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from heapspy_agent import memstats, protocol
from heapspy_agent.protocol import ProtocolError

if TYPE_CHECKING:
    from typing import Any

# --- limits: a frame beyond any of them is a protocol violation -----------------------
MAX_TOKEN = 256
MAX_TEXT = 4096  # a reason, a message, a note, a path, one argv item
MAX_FUNCTION = 1024  # a (qualified) function name
MAX_TRACEBACK = 64 * 1024
MAX_ARGV = 256
MAX_NOTES = 32
MAX_LIBRARIES = 200  # libraries listed in the native status, redirected and skipped each
MAX_STACKS_PER_FRAME = 20000
MAX_FRAMES_PER_STACK = 512  # the most --frames allows
MAX_NATIVE_FRAMES = 32  # return addresses per stack (--native-frames; the shim's depth)
MAX_SITES_PER_FRAME = 100000  # entries of inuse / alloc / est in one SAMPLES frame
MAX_SIZE_CLASSES = 64
MAX_GC_GENERATIONS = 8
MAX_THREAD_NAMES = 64
MAX_THREAD_NAME = 200
MAX_LOOPS = 16
MAX_LABEL_SETS = 1 << 14  # HS_MAX_LABELS: label sets one session names
MAX_THREAD_ALLOC = 256  # threads in totals.thread_alloc (the most allocating)
MAX_CENSUS_SITES_PER_FRAME = 1000  # the agent sends a census in frames of this many paths
MAX_CENSUS_DEPTH = 8  # frames of one retention path: root, containers, type
MAX_CENSUS_NAME = 1024
MAX_STEP_NAME = 64  # one step's name on a retention path: ".attr", "['key']" (40 chars)
# the step into an instance's own attribute dict (where the walk went through one, as
# before 3.11): shown as nothing, the next step being named as the attribute
OWN_DICT = "."
# COMMAND stacks: threads and tasks grouped by identical stack (heapspy_agent.stacks)
MAX_STACK_GROUPS = 1000  # groups of each kind in one reply
MAX_GROUP_NAMES = 8  # the first names of a group's threads or tasks
MAX_STACK_NAME = 200  # a thread's or a task's name
MAX_STACK_DEPTH = 128  # frames of one thread or coroutine stack
MAX_TYPE_NAME = 200  # a type's name (module.Name) in a `types` reply
MAX_TYPES_PER_SITE = 32  # types of one stack's live samples; the rest sent as OTHER_TYPES
MAX_TYPED_SITES = 20000  # stacks in one `types` reply (the most live bytes first)
OTHER_TYPES = "(other types)"
MAX_RETAINER_STACKS = 256  # stacks one `retainers` command names (heapspy_agent.retainers)
MAX_RETAINER_PATHS = 8  # paths sent per stack, the largest; the rest folded into one
DEFAULT_STACK_DEPTH = 64
# Stacks are split off into STACKS frames when their estimated size passes this share of
# the frame limit (the rest of a SAMPLES frame, its numbers, needs the other half).
STACK_BUDGET = protocol.MAX_FRAME // 2

I64 = (-(2**63), 2**64 - 1)  # counters as the shim keeps them (C int64 / uint64)
ID = (0, 2**64 - 1)
U64 = ID
PID = (0, 2**31 - 1)


# --- the sampling mode: one value, decoded here for both ends ------------------------
SAMPLED = "sampled"  # the shim records one allocation per ~rate bytes, with its stack
EXACT = "exact"  # tracemalloc records every live block (--rate 1, and the fallback)
TOTALS = "totals"  # the shim counts every allocation, keeps no stack (--rate 0)
MODES = (SAMPLED, EXACT, TOTALS)
DEFAULT_FRAMES = 64
# The one frame of the shim's overflow stack: samples taken while its stack table was full.
# heapspy shows it with how many there were ("[stack table full: 12 samples]").
OVERFLOW_FUNCTION = "[stack table full]"


class Sampling:
    """How allocations are recorded: the mode, the mean bytes between samples and the
    frames kept per stack.

    People spell it as one number (``--rate``, the daemon's ``rate``): 0 totals only, 1
    exact, more the mean gap of sampled mode. ``of_rate`` reads that spelling, and is
    the only place that does; everything else asks this value (``estimates``,
    ``period``, ``shim_rate``). heapspy sends it once, in WELCOME; the agent answers in
    READY with what it really does (without the shim, sampled becomes exact), and that
    answer is what the session, its dumps and its reports go by. A live ``heapspy
    rate`` makes a new value (``with_rate``).

    ``rate`` keeps the command line's spelling in every mode (1 exact, 0 totals), so a
    sidecar's or a status reply's ``rate`` reads as the user typed it. A plain class:
    this module is imported inside the target (see the module's docstring).
    """

    __slots__ = ("mode", "rate", "frames")

    def __init__(self, mode: str, rate: int, frames: int = DEFAULT_FRAMES) -> None:
        if mode not in MODES:
            raise ValueError("unknown sampling mode %r" % (mode,))
        if mode == SAMPLED and rate < 2:
            raise ValueError("sampled mode takes a rate of 2 bytes or more, not %d" % rate)
        self.mode = mode
        self.rate = rate if mode == SAMPLED else (1 if mode == EXACT else 0)
        self.frames = frames

    @classmethod
    def of_rate(cls, rate: int, frames: int = DEFAULT_FRAMES) -> Sampling:
        """The command line's spelling: 0 totals only, 1 exact, >= 2 sampled."""
        if rate < 0:
            raise ValueError("a sampling rate cannot be negative")
        mode = TOTALS if rate == 0 else EXACT if rate == 1 else SAMPLED
        return cls(mode, rate, frames)

    def with_rate(self, rate: int) -> Sampling:
        """A live change of rate (``heapspy rate``): the shim keeps running, so 0 stops
        taking stacks (totals) and >= 2 samples; exact mode has no rate to change."""
        if self.mode == EXACT or rate == 1 or rate < 0:
            raise ValueError("a live session takes rates of 0 or 2 bytes and up")
        return Sampling(TOTALS if rate == 0 else SAMPLED, rate, self.frames)

    @property
    def estimates(self) -> bool:
        """Whether the figures are upscaled samples, with sampling errors: exact mode
        and totals record every block (and totals keep no stacks to estimate)."""
        return self.mode == SAMPLED

    @property
    def period(self) -> int:
        """The pprof period and the rate the estimators take: 1 where nothing is
        upscaled."""
        return self.rate if self.mode == SAMPLED else 1

    @property
    def shim_rate(self) -> int:
        """What the C shim's ``rate`` means: the mean gap, or 0 for totals only."""
        return self.rate if self.mode == SAMPLED else 0

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "rate": self.rate, "frames": self.frames}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Sampling:
        """From a checked SAMPLING record (or a sidecar's copy of one); a combination
        no agent makes (sampled at rate 1) is a ProtocolError."""
        try:
            return cls(str(body["mode"]), int(body["rate"]), int(body["frames"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError("sampling: %s" % exc) from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sampling):
            return NotImplemented
        return (self.mode, self.rate, self.frames) == (other.mode, other.rate, other.frames)

    def __hash__(self) -> int:
        return hash((self.mode, self.rate, self.frames))

    def __repr__(self) -> str:
        return "Sampling(%r, %d, %d)" % (self.mode, self.rate, self.frames)


class Field:
    """One typed, bounded value; ``check`` returns it, or a copy where keys had to be
    dropped (``copies``): a frame of plain values is checked in place, not duplicated.

    ``where`` names the value in the error. Containers check their items with their own
    ``where`` and, only when one fails, check them again with each item's path
    (``totals.size_classes[3][1]``) to raise the error naming it: the checks are pure,
    and a daemon checks every frame of every session, where formatting each item's path
    cost as much as the checks themselves."""

    copies = False

    def check(self, value: Any, where: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


def _fail(where: str, what: str, value: Any) -> ProtocolError:
    return ProtocolError("%s: expected %s, got %s" % (where, what, type(value).__name__))


class Int(Field):
    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def check(self, value: Any, where: str) -> Any:
        if type(value) is not int:  # bool is an int subclass: refused too
            raise _fail(where, "an integer", value)
        if not self.lo <= value <= self.hi:
            raise ProtocolError(
                "%s: %d is out of range [%d, %d]" % (where, value, self.lo, self.hi)
            )
        return value


class Num(Field):
    """An int or a finite float (json turns 1e999 into inf: refused by the range)."""

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi

    def check(self, value: Any, where: str) -> Any:
        if type(value) not in (int, float):
            raise _fail(where, "a number", value)
        if not self.lo <= value <= self.hi:
            raise ProtocolError("%s: %r is out of range" % (where, value))
        return value


class Bool(Field):
    def check(self, value: Any, where: str) -> Any:
        if type(value) is not bool:
            raise _fail(where, "true or false", value)
        return value


class Str(Field):
    def __init__(self, max_len: int, choices: tuple[str, ...] = ()) -> None:
        self.max_len, self.choices = max_len, choices

    def check(self, value: Any, where: str) -> Any:
        if type(value) is not str:
            raise _fail(where, "a string", value)
        if len(value) > self.max_len:
            raise ProtocolError(
                "%s: string of %d characters (at most %d)" % (where, len(value), self.max_len)
            )
        if self.choices and value not in self.choices:
            raise ProtocolError(
                "%s: %r is not one of %s" % (where, value[:40], ", ".join(self.choices))
            )
        return value


class Opt(Field):
    """``null`` or the inner field."""

    def __init__(self, inner: Field) -> None:
        self.inner = inner

    def check(self, value: Any, where: str) -> Any:
        return None if value is None else self.inner.check(value, where)


class ListOf(Field):
    def __init__(self, item: Field, max_len: int) -> None:
        self.item, self.max_len = item, max_len
        self.copies = item.copies

    def check(self, value: Any, where: str) -> Any:
        if type(value) is not list:
            raise _fail(where, "a list", value)
        if len(value) > self.max_len:
            raise ProtocolError("%s: %d items (at most %d)" % (where, len(value), self.max_len))
        item = self.item.check
        try:  # the items' paths are spelt out only to name one that failed (see Field)
            if not self.copies:
                for v in value:
                    item(v, where)
                return value
            return [item(v, where) for v in value]
        except ProtocolError:
            for i, v in enumerate(value):
                item(v, "%s[%d]" % (where, i))
            raise


def _number_bounds(field: Field) -> tuple[tuple[type, ...], float, float] | None:
    """The types and range a plain number field accepts (``Tuple_``'s quick check)."""
    if type(field) is Int:
        return (int,), field.lo, field.hi
    if type(field) is Num:
        return (int, float), field.lo, field.hi
    return None


class Tuple_(Field):
    """A list of exactly these fields (a pair, a frame). A tuple of plain numbers (the
    counts of a site, a size class, a domain: a SAMPLES frame holds dozens) is checked
    in one loop here, without a call per number; anything it does not pass is checked
    again field by field, which names what is wrong."""

    def __init__(self, *items: Field) -> None:
        self.items = items
        self.copies = any(f.copies for f in items)
        bounds = [_number_bounds(f) for f in items]
        numbers = [b for b in bounds if b is not None]
        self._numbers = numbers if len(numbers) == len(items) else None

    def check(self, value: Any, where: str) -> Any:
        if type(value) is not list or len(value) != len(self.items):
            raise _fail(where, "a list of %d items" % len(self.items), value)
        numbers = self._numbers
        if numbers is not None:
            for (types, lo, hi), v in zip(numbers, value):
                if type(v) not in types or not lo <= v <= hi:
                    break
            else:
                return value
        try:
            if not self.copies:
                for f, v in zip(self.items, value):
                    f.check(v, where)
                return value
            return [f.check(v, where) for f, v in zip(self.items, value)]
        except ProtocolError:
            for i, (f, v) in enumerate(zip(self.items, value)):
                f.check(v, "%s[%d]" % (where, i))
            raise


class LabelMap(Field):
    """``{"<label set id>": LABELS record}``: the label sets first reported in a frame."""

    copies = True

    def __init__(self, value: Record, max_len: int = MAX_LABEL_SETS) -> None:
        self.value, self.max_len = value, max_len

    def check(self, value: Any, where: str) -> Any:
        if type(value) is not dict:
            raise _fail(where, "an object", value)
        if len(value) > self.max_len:
            raise ProtocolError("%s: %d entries (at most %d)" % (where, len(value), self.max_len))
        out = {}
        for key, v in value.items():
            if not (0 < len(key) <= 10 and key.isdigit() and key.isascii()):
                raise ProtocolError("%s: key %r is not a label set id" % (where, key[:40]))
            out[key] = self.value.check(v, "%s[%s]" % (where, key))
        return out


class SiteMap(Field):
    """``{"<stack id>": value}``: per-site numbers keyed by the stack's id as text."""

    def __init__(self, value: Field, max_len: int = MAX_SITES_PER_FRAME) -> None:
        assert not value.copies
        self.value, self.max_len = value, max_len

    def check(self, value: Any, where: str) -> Any:
        if type(value) is not dict:
            raise _fail(where, "an object", value)
        if len(value) > self.max_len:
            raise ProtocolError("%s: %d entries (at most %d)" % (where, len(value), self.max_len))
        check = self.value.check
        for key, v in value.items():
            if not (0 < len(key) <= 20 and key.isdigit() and key.isascii()):
                raise ProtocolError("%s: key %r is not a stack id" % (where, key[:40]))
            try:
                check(v, where)  # plain values: checked in place
            except ProtocolError:
                check(v, "%s[%s]" % (where, key))
                raise
        return value


class Record(Field):
    """A JSON object with these fields; ``required`` ones must be present, keys not
    defined here are dropped."""

    copies = True

    def __init__(self, name: str, fields: dict[str, Field], required: tuple[str, ...] = ()) -> None:
        self.name, self.fields, self.required = name, fields, required

    def check(self, value: Any, where: str = "") -> Any:
        where = where or self.name
        if type(value) is not dict:
            raise _fail(where, "an object", value)
        for key in self.required:
            if key not in value:
                raise ProtocolError("%s: %s is missing" % (where, key))
        try:
            return {
                key: spec.check(value[key], where)
                for key, spec in self.fields.items()
                if key in value
            }
        except ProtocolError:
            for key, spec in self.fields.items():
                if key in value:
                    spec.check(value[key], "%s.%s" % (where, key))
            raise


# --- the messages, by frame kind ------------------------------------------------------
def _define() -> dict[int, Record]:
    """Every message, by frame kind: the protocol's definition. Built on first use, so
    that the agent (which builds messages and checks none) holds none of these objects
    in the target."""
    COUNT = Int(*I64)
    PAIR = Tuple_(Int(*U64), Int(*U64))  # (objects, bytes): never negative
    EST = Num(0.0, 1e30)  # an upscaled count or size
    FRAME = Tuple_(Str(MAX_FUNCTION), Str(MAX_TEXT), Int(0, 2**31 - 1))  # function, file, line
    STACK = Record(
        "stack",
        {
            "id": Int(*ID),
            "frames": ListOf(FRAME, MAX_FRAMES_PER_STACK),
            "labels": Int(0, MAX_LABEL_SETS - 1),  # its label set (LABELS below); 0: none
            # --native-frames: return addresses in the target, leaf first, under the
            # leaf of "frames" (heapspy names them from the target's mapped files)
            "native": ListOf(Int(*U64), MAX_NATIVE_FRAMES),
        },
        required=("id", "frames"),
    )
    # Who made a stack's samples (heapspy_agent.labels): keys left out where unknown.
    LABELS = Record(
        "labels",
        {
            "thread": Str(MAX_THREAD_NAME),
            "thread_id": Int(0, 2**32 - 1),  # native id
            "task": Str(MAX_THREAD_NAME),
            "coro": FRAME,  # the task's coroutine, as a frame (named like the stacks')
        },
    )
    STACKS_FIELD = ListOf(STACK, MAX_STACKS_PER_FRAME)
    # a Sampling (above): the mode, its rate as the command line spells it, frames
    SAMPLING = Record(
        "sampling",
        {"mode": Str(16, MODES), "rate": COUNT, "frames": Int(1, MAX_FRAMES_PER_STACK)},
        required=("mode", "rate", "frames"),
    )
    TOTALS = Record(
        "totals",
        {
            "allocated_bytes": COUNT,
            "allocations": COUNT,
            "freed_bytes": Opt(COUNT),
            "frees": Opt(COUNT),
            "reallocs": COUNT,
            "size_classes": ListOf(PAIR, MAX_SIZE_CLASSES),
            # (allocations, bytes, frees) per domain; raw, native (malloc & co of the
            # redirected libraries) and mmap only when native allocations are sampled
            "domains": Record(
                "domains",
                {
                    d: Tuple_(COUNT, COUNT, COUNT)
                    for d in ("mem", "obj", "numpy", "raw", "native", "mmap")
                },
            ),
            # which libraries' allocator entries were redirected, which not and why;
            # sent when it changes
            "native": Record(
                "native",
                {
                    "redirected": ListOf(Str(MAX_TEXT), MAX_LIBRARIES),
                    "skipped": ListOf(Tuple_(Str(MAX_TEXT), Str(MAX_TEXT)), MAX_LIBRARIES),
                    "more": COUNT,
                    "notes": ListOf(Str(MAX_TEXT), MAX_NOTES),
                },
            ),
            "numpy": Str(100),
            "rate": COUNT,
            "sampled_count": COUNT,
            "live_samples": COUNT,
            "dropped_samples": COUNT,
            "overflow_samples": COUNT,
            "evicted_stacks": COUNT,
            "stacks": COUNT,
            "shim_memory": COUNT,
            "traced_bytes": COUNT,
            "peak_traced_bytes": COUNT,
            # exact bytes allocated per thread since attach: [native id, bytes, name]
            "thread_alloc": ListOf(
                Tuple_(Int(0, 2**32 - 1), COUNT, Str(MAX_THREAD_NAME)), MAX_THREAD_ALLOC
            ),
            "agent_alloc": COUNT,  # exact bytes the agent's own thread allocated
        },
    )
    FACTS = Record(
        "facts",
        {
            "gc_counts": ListOf(COUNT, MAX_GC_GENERATIONS),
            "gc_collections": ListOf(COUNT, MAX_GC_GENERATIONS),
            "gc_collected": ListOf(COUNT, MAX_GC_GENERATIONS),
            "gc_uncollectable": ListOf(COUNT, MAX_GC_GENERATIONS),
            "gc_seconds": Num(0.0, 1e12),  # time spent collecting since attach
            "threads": COUNT,
            "thread_names": ListOf(Str(MAX_THREAD_NAME), MAX_THREAD_NAMES),
            "asyncio_tasks": ListOf(COUNT, MAX_LOOPS),  # unfinished tasks per running loop
            "collect_cpu": Num(0.0, 1e9),  # seconds of CPU the last collection took
            "interval": Num(0.0, 1e9),  # seconds until the next scheduled collection
        },
    )

    CENSUS_STATE: dict[str, Field] = {
        "objects": COUNT,
        "bytes": COUNT,
        "elapsed": Num(0.0, 1e9),  # seconds since the census started
        "cpu": Num(0.0, 1e9),  # seconds of the agent thread's CPU it took
        "longest_slice": Num(0.0, 1e9),  # the longest slice of work, seconds of CPU
        "longest_slice_wall": Num(0.0, 1e9),  # the same in wall time (the OS may delay it)
        "phase": Str(32),
        "bookkeeping": COUNT,  # bytes of the walk's own visited bitmap
        "walker": Str(16),  # "native" (census_walk.c) or "python" (the fallback)
    }
    # a group of threads or tasks with the same stack (root first) and awaited type
    STACK_GROUP = Record(
        "group",
        {
            "count": Int(1, 2**31),
            "names": ListOf(Str(MAX_STACK_NAME), MAX_GROUP_NAMES),
            "frames": ListOf(FRAME, MAX_STACK_DEPTH),
            "awaits": Str(MAX_FUNCTION),
        },
        required=("count", "frames"),
    )
    CENSUS_SITE = Tuple_(ListOf(Str(MAX_CENSUS_NAME), MAX_CENSUS_DEPTH), COUNT, COUNT)

    return {
        # A heap census (COMMAND census): progress now and then, then its results in
        # CENSUS frames of at most MAX_CENSUS_SITES_PER_FRAME paths each (root first,
        # the type last; (objects, bytes)); the last frame says done, with the totals.
        protocol.CENSUS_PROGRESS: Record("CENSUS_PROGRESS", CENSUS_STATE),
        # The answer to COMMAND retainers, once its walk is over: per stack id, its live
        # samples by the path that holds them (root first, then containers; or one of
        # the retainers module's NOT_OBJECT / NOT_REACHED): (path, samples, est. bytes,
        # step names: per path element, the attribute or key that holds it, or "")
        protocol.RETAINERS: Record(
            "RETAINERS",
            {
                "stacks": SiteMap(
                    ListOf(
                        Tuple_(
                            ListOf(Str(MAX_CENSUS_NAME), MAX_CENSUS_DEPTH),
                            Int(0, 2**40),
                            EST,
                            ListOf(Str(MAX_STEP_NAME), MAX_CENSUS_DEPTH),
                        ),
                        MAX_RETAINER_PATHS,
                    ),
                    MAX_RETAINER_STACKS,
                ),
                "targets": Int(0, 2**40),  # objects looked for
                "left_out": Int(0, 2**40),  # live samples not looked for (beyond the cap)
                "partial": Bool(),
                "elapsed": Num(0.0, 1e9),
                "cpu": Num(0.0, 1e9),
                "longest_slice": Num(0.0, 1e9),
                "longest_slice_wall": Num(0.0, 1e9),
                "objects": COUNT,
                "walker": Str(16),
                "setup": Num(0.0, 1e9),  # seconds finding the objects, before the walk
            },
            required=("stacks",),
        ),
        protocol.CENSUS: Record(
            "CENSUS",
            dict(
                CENSUS_STATE,
                sites=ListOf(CENSUS_SITE, MAX_CENSUS_SITES_PER_FRAME),
                done=Bool(),
                partial=Bool(),  # stopped before the end: what was counted so far
                folded_paths=COUNT,  # paths folded into ([other], type)
                notes=ListOf(Str(MAX_TEXT), MAX_NOTES),
            ),
            required=("sites", "done"),
        ),
        # agent -> heapspy. First frame: who is calling (token: the session's secret).
        protocol.HELLO: Record(
            "HELLO",
            {
                "version": Int(0, 2**31),
                "token": Str(MAX_TOKEN),
                "pid": Int(*PID),
                "python": Str(64),  # sys.version's first word
                "hexversion": Int(0, 2**32),
                "argv": ListOf(Str(MAX_TEXT), MAX_ARGV),
                "executable": Opt(Str(MAX_TEXT)),
                "threads": Int(0, 2**31),
            },
            required=("version", "token"),
        ),
        # Second frame, after WELCOME: how the agent profiles (it decides, from the config).
        protocol.READY: Record(
            "READY",
            {
                "sampling": SAMPLING,  # what it does, which may not be what was asked
                "notes": ListOf(Str(MAX_TEXT), MAX_NOTES),
                "tracemalloc_owned": Opt(Bool()),
            },
            required=("sampling",),
        ),
        # One collection: new stacks (each sent once), then per-site absolute numbers.
        # inuse: live (objects, bytes); alloc: allocated since attach (sampled mode);
        # est: the shim's estimates (alloc objects, alloc bytes, live objects, live bytes);
        # var: their variances, summed per sample at its own rate; evicted: stacks the
        # agent no longer holds (after the numbers above: their ids may come back as
        # other stacks in later frames).
        protocol.SAMPLES: Record(
            "SAMPLES",
            {
                "seq": Int(0, 2**63),
                "stacks": STACKS_FIELD,
                "inuse": SiteMap(PAIR),
                "alloc": SiteMap(PAIR),
                "est": SiteMap(Tuple_(*(Num(0.0, 1e30) for _ in range(4)))),
                "labels": LabelMap(LABELS),  # label sets first used by these stacks
                "var": SiteMap(Tuple_(*(Num(0.0, 1e60) for _ in range(4)))),
                "evicted": ListOf(Int(*ID), MAX_SITES_PER_FRAME),
                "totals": TOTALS,
                "facts": FACTS,
                "dropped": Int(0, 2**63),  # stacks or sites the agent left out to fit
                # exact mode: this frame holds the label samples the shim takes beside
                # tracemalloc (heapspy_agent.exact), sent before the exact frame itself
                "labelled": Bool(),
            },
            required=("seq",),
        ),
        # New stacks that did not fit in the SAMPLES frame that follows them.
        protocol.STACKS: Record(
            "STACKS", {"stacks": STACKS_FIELD, "labelled": Bool()}, required=("stacks",)
        ),
        protocol.BYE: Record("BYE", {"reason": Str(MAX_TEXT)}),
        protocol.ERROR: Record(
            "ERROR",
            {
                "code": Str(64),
                "message": Str(MAX_TEXT),
                "traceback": Opt(Str(MAX_TRACEBACK)),
                "holder_pid": Int(*PID),
            },
            required=("code",),
        ),
        protocol.REPLY: Record(
            "REPLY",
            {
                "id": Opt(Int(0, 2**63)),
                "ok": Bool(),
                "error": Str(MAX_TEXT),
                "sampling": SAMPLING,  # rate: the agent's sampling after the change
                "collected": COUNT,  # gc: what gc.collect() returned
                "trimmed": Int(0, 1),  # trim: malloc_trim(0)'s answer
                "seconds": Num(0.0, 1e6),  # memstats: how long it held the target's GIL
                "pymalloc": Record("pymalloc", dict.fromkeys(memstats.PYMALLOC_KEYS, COUNT)),
                "glibc": Record("glibc", dict.fromkeys(memstats.GLIBC_KEYS, COUNT)),
                # stacks: threads and pending asyncio tasks grouped by stack, how many
                # of each there are, and how many of each the groups sent leave out
                "threads": ListOf(STACK_GROUP, MAX_STACK_GROUPS),
                "tasks": ListOf(STACK_GROUP, MAX_STACK_GROUPS),
                "thread_count": Int(0, 2**31),
                "task_count": Int(0, 2**31),
                "left_out": Tuple_(Int(0, 2**31), Int(0, 2**31)),
                # types: per stack id, its live samples by type name ("": not an object):
                # (name, objects, bytes, estimated objects, estimated bytes); complete:
                # every stack with live samples is in it (none left out to fit)
                "types": SiteMap(
                    ListOf(
                        Tuple_(Str(MAX_TYPE_NAME), Int(*U64), Int(*U64), EST, EST),
                        MAX_TYPES_PER_SITE,
                    ),
                    MAX_TYPED_SITES,
                ),
                "complete": Bool(),
            },
            required=("ok",),
        ),
        protocol.HEARTBEAT: Record("HEARTBEAT", {}),
        # heapspy -> agent (heapspy is trusted by the agent; defined here for both ends)
        protocol.WELCOME: Record(
            "WELCOME",
            {
                "config": Record(
                    "config",
                    {
                        "sampling": SAMPLING,
                        "interval": Num(0.0, 1e9),
                        # a scheduled collection with nothing live changed waits up
                        # to this long to be sent (heapspy_agent.quiet); 0: never waits
                        "idle_report": Num(0.0, 1e9),
                        "collect_budget": Num(0.0, 1.0),
                        "require_sampling": Bool(),
                        "native": Bool(),  # sample native allocations too
                        "native_frames": Bool(),  # and their native call stacks
                    },
                )
            },
        ),
        protocol.COMMAND: Record(
            "COMMAND",
            {
                "id": Int(0, 2**63),
                "cmd": Str(
                    32,
                    (
                        "detach",
                        "sample",
                        "rate",
                        "gc",
                        "memstats",
                        "trim",
                        "census",
                        "census_stop",
                        "stacks",
                        "retainers",
                    ),
                ),
                # retainers: the stack ids whose live samples' roots are wanted
                "stacks": ListOf(Int(*ID), MAX_RETAINER_STACKS),
                "glibc": Bool(),
                "rate": COUNT,
                # census: seconds of work per slice, seconds of rest between slices
                "slice": Num(0.001, 1.0),
                "pause": Num(0.0, 10.0),
                "depth": Int(1, MAX_STACK_DEPTH),  # stacks: frames kept per stack
            },
            required=("id", "cmd"),
        ),
    }


_MESSAGES: dict[int, Record] = {}


def messages() -> dict[int, Record]:
    if not _MESSAGES:
        _MESSAGES.update(_define())
    return _MESSAGES


FROM_AGENT = frozenset(
    (
        protocol.HELLO,
        protocol.READY,
        protocol.SAMPLES,
        protocol.STACKS,
        protocol.CENSUS_PROGRESS,
        protocol.CENSUS,
        protocol.RETAINERS,
        protocol.BYE,
        protocol.ERROR,
        protocol.REPLY,
        protocol.HEARTBEAT,
    )
)


def check(kind: int, body: Any) -> dict[str, Any]:
    """The body of a frame the agent sent, checked against its message; raises
    ProtocolError for an unknown kind or a body that does not fit."""
    if kind not in FROM_AGENT:
        raise ProtocolError("unknown frame kind %d" % kind)
    checked: dict[str, Any] = messages()[kind].check(body)
    return checked


# --- the agent's side: build messages within the limits ------------------------------
def clip_text(value: Any, limit: int = MAX_TEXT) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip_argv(argv: list[Any]) -> list[str]:
    return [clip_text(a) for a in argv[:MAX_ARGV]]


def _clip_stack(stack: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The stack within the limits, and its estimated encoded size."""
    frames = []
    size = 24
    for func, filename, line in stack["frames"][-MAX_FRAMES_PER_STACK:]:
        func, filename = clip_text(func, MAX_FUNCTION), clip_text(filename)
        size += len(func) + len(filename) + 24
        frames.append([func, filename, line])
    clipped = {"id": stack["id"], "frames": frames}
    if "labels" in stack:
        clipped["labels"] = stack["labels"]
    if "native" in stack:
        clipped["native"] = stack["native"][:MAX_NATIVE_FRAMES]
        size += 21 * len(clipped["native"])
    return clipped, size * 2  # x2: escapes, non-ASCII


def fit_samples(body: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """The frames that carry one collection: STACKS frames for the new stacks that do
    not fit, then the SAMPLES frame itself; site entries beyond the limit are left out
    and counted in ``dropped``."""
    frames: list[tuple[int, dict[str, Any]]] = []
    chunk: list[dict[str, Any]] = []
    used = 0
    for stack in body.get("stacks", ()):
        clipped, size = _clip_stack(stack)
        if chunk and (used + size > STACK_BUDGET or len(chunk) >= MAX_STACKS_PER_FRAME):
            frames.append((protocol.STACKS, {"stacks": chunk}))
            chunk, used = [], 0
        chunk.append(clipped)
        used += size
    body["stacks"] = chunk
    dropped = 0
    for key in ("inuse", "alloc", "est", "var"):
        sites = body.get(key)
        if sites is not None and len(sites) > MAX_SITES_PER_FRAME:
            dropped = max(dropped, len(sites) - MAX_SITES_PER_FRAME)
            body[key] = dict(list(sites.items())[:MAX_SITES_PER_FRAME])
    if dropped:
        body["dropped"] = dropped
    frames.append((protocol.SAMPLES, body))
    return frames
