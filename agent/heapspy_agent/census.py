"""A census of the live Python objects: who holds what, walked inside the target.

The walk runs in the agent thread, a slice at a time (``Census.step``): the agent's loop
gives it at most ``slice`` seconds of work, then sleeps ``pause`` seconds so that the
target runs, and serves heapspy meanwhile. Every other thread may also take the GIL
inside a slice (CPython's switch interval), so a slice is a CPU budget, not a stop.

Roots, in this fixed order; each is walked to its end before the next starts, so an
object belongs to the first root that reaches it (a cheap approximation of a dominator
tree, not the real one: an object two roots share goes to the earlier one):

1. module globals, modules sorted by name, globals in dict order: ``module.NAME``; a
   class defined in its module is a root of its own (``module.Class``) and each of its
   attributes one more (``module.Class.attr``);
2. threads' frame locals, outermost frame first: ``thread <name>: function``;
3. what the gc tracks and no root reached, split by reference counts into
   ``held outside Python roots`` (referred to by C code, the interpreter, or a running
   frame's temporaries) and ``unreachable (cyclic garbage)``.

Modules, module dicts and classes are boundaries: a walk never goes through one (a
function's ``__globals__`` would otherwise hand a whole module to whoever holds the
function). Everything reached is counted once, including what the gc does not track
(str, bytes, int, float inside containers). Nothing of the target's code runs: objects are
opened with ``gc.get_referents`` (their C ``tp_traverse``), typed with ``type()``, and
sized by the C ``__sizeof__`` found in the type's MRO (a Python ``__sizeof__`` is skipped
for the next C one down, ultimately ``object.__sizeof__``: basic size + item size x
length), plus the gc header as ``sys.getsizeof`` adds it. Attributes are read only
through the C getters of ``type`` itself, never by attribute lookup on a target object.

Bookkeeping is bounded: the visited objects are bits in a two-level bitmap (1 MiB of
address space per ``bytearray`` of 8 KiB; objects are at least 16 bytes apart), paths are
interned and capped at ``max_paths`` (the rest fold into ``[other]``).
"""

import gc
import itertools
import sys
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # type comments: the agent imports nothing it does not need
    from typing import Any, Callable, Dict, List, Optional, Set, Tuple  # noqa: F401

    from heapspy_agent import census_walk  # noqa: F401

MAX_PATHS = 100000  # distinct paths kept while walking; beyond, (OTHER, type) absorbs them
SEND_PATHS = 10000  # the largest paths sent; the rest folded into (OTHER, type)
MAX_DEPTH = 3  # container frames kept between a root and the leaf type
MAX_NAME = 200  # characters of one frame name
OTHER = "[other]"
HELD_OUTSIDE = "held outside Python roots"
GARBAGE = "unreachable (cyclic garbage)"
CHECK_EVERY = 128  # objects between two looks at the clock
# A list, tuple or dict larger than this is opened a chunk at a time: its referents in one
# gc.get_referents call would hold the GIL (and a copy of them) as long as they are many.
CHUNK = 32768

_HEAPTYPE = 1 << 9
_HAVE_GC = 1 << 14
_TYPE_SUBCLASS = 1 << 31  # instances are classes (isinstance would read __class__)
_DICT_SUBCLASS = 1 << 29
_dict_keys = dict.keys  # the C method, whatever a subclass defines
_PREHEADER = (1 << 3) | (1 << 4)  # 3.11+: managed weakref / managed dict

_type_dict = type.__dict__["__dict__"].__get__  # C getters of type: no metaclass involved
_type_mro = type.__dict__["__mro__"].__get__
_type_name = type.__dict__["__name__"].__get__
_type_module = type.__dict__["__module__"].__get__
_type_flags = type.__dict__["__flags__"].__get__
_C_METHOD = type(object.__dict__["__sizeof__"])
_object_sizeof = object.__dict__["__sizeof__"]
_ModuleType = type(sys)
_module_dict = _ModuleType.__dict__["__dict__"].__get__  # type: ignore[index]
_FrameType = type(sys._getframe())


class _Probe:
    pass


class Bitmap:
    """Visited object addresses: one bit per 16 bytes, in 1 MiB chunks made on demand."""

    CHUNK_SHIFT = 20

    def __init__(self):  # type: () -> None
        self.chunks = {}  # type: Dict[int, bytearray]

    def add(self, address):  # type: (int) -> bool
        """Mark ``address``; False when it was marked already."""
        chunks = self.chunks
        key = address >> 20
        chunk = chunks.get(key)
        if chunk is None:
            chunk = chunks[key] = bytearray(8192)
        offset = (address & 0xFFFFF) >> 4
        byte = offset >> 3
        bit = 1 << (offset & 7)
        old = chunk[byte]
        if old & bit:
            return False
        chunk[byte] = old | bit
        return True

    def __contains__(self, address):  # type: (int) -> bool
        chunk = self.chunks.get(address >> 20)
        if chunk is None:
            return False
        offset = (address & 0xFFFFF) >> 4
        return bool(chunk[offset >> 3] & (1 << (offset & 7)))

    def memory(self):  # type: () -> int
        return len(self.chunks) * (8192 + 100)


def _is_class(obj):  # type: (Any) -> bool
    return bool(_type_flags(type(obj)) & _TYPE_SUBCLASS)


_module_types = {}  # type: Dict[type, bool]
_metaclasses = {id(type): (type, True)}  # type: Dict[int, Tuple[type, bool]]


def _plain_hash(tp):  # type: (type) -> bool
    """Whether ``tp`` can be a dict key without running the target's code.

    Hashing a class, and comparing it on a collision, calls its metaclass's ``__hash__``
    and ``__eq__``: type's own C code unless a metaclass defines them. Classes whose
    metaclass does are looked up every time instead of cached by type."""
    meta = type(tp)
    if meta is type:
        return True
    known = _metaclasses.get(id(meta))  # kept alive in the value: the id stays its own
    if known is None:
        plain = True
        try:
            for base in _type_mro(meta):
                if base is not type and base is not object:
                    names = _type_dict(base)
                    if "__hash__" in names or "__eq__" in names:
                        plain = False
                        break
        except Exception:  # noqa: BLE001
            plain = False
        known = _metaclasses[id(meta)] = (meta, plain)
    return known[1]


def _is_module(tp):  # type: (type) -> bool
    plain = _plain_hash(tp)
    known = _module_types.get(tp) if plain else None
    if known is None:
        try:  # by identity: `in` would compare with ==
            known = any(base is _ModuleType for base in _type_mro(tp))
        except Exception:  # noqa: BLE001
            known = False
        if plain:
            _module_types[tp] = known
    return known


def _own_class(cls, module):  # type: (Any, str) -> bool
    # a class's __module__ can be any object its author put there: compared only when it
    # is an exact str, so that no __eq__ of the target's runs
    try:
        found = _type_module(cls)
    except Exception:  # noqa: BLE001
        return False
    return type(found) is str and found == module


def _thread_label(thread, frame):  # type: (str, Any) -> str
    """The root of a thread's frame locals (``thread <name>: <function>``)."""
    return "thread %s: %s" % (thread, _clip(frame.f_code.co_name))


def _agent_class(cls):  # type: (Any) -> bool
    try:
        module = _type_module(cls)
    except Exception:  # noqa: BLE001
        return False
    return type(module) is str and module.startswith("heapspy_agent")


_CHUNKED = (list, tuple, dict)  # exactly these: their slicing and iteration are C code


def _chunks(obj, tp):  # type: (Any, type) -> Any
    """The referents of a big list, tuple or dict, CHUNK at a time (an iterator of
    lists). A dict that changes size meanwhile ends its iteration early: an estimate."""
    if tp is dict:
        pairs = iter(obj.items())
        while True:
            try:
                chunk = [x for kv in itertools.islice(pairs, CHUNK // 2) for x in kv]
            except RuntimeError:  # it changed size between two slices
                return
            if not chunk:
                return
            yield chunk
    else:
        for start in range(0, len(obj), CHUNK):
            yield obj[start : start + CHUNK]


def _collections():  # type: () -> int
    """Collections the gc has made so far, all generations."""
    return sum(int(stats.get("collections", 0)) for stats in gc.get_stats())


def _next_chunk(chunks):  # type: (Any) -> List[Any]
    for chunk in chunks:
        return chunk  # type: ignore[no-any-return]
    return []


def _dotted(owner, key):  # type: (str, Any) -> str
    return _clip(owner + "." + key) if type(key) is str else owner + ".?"


def _clip(text):  # type: (Any) -> str
    if type(text) is not str:  # str() of a target's object could run its code
        return "?"
    return text if len(text) <= MAX_NAME else text[: MAX_NAME - 3] + "..."


class Census:
    """One walk of the heap, advanced by ``step``; results in ``sites``."""

    walker = "python"  # which walk: this one, or NativeCensus's

    def __init__(self, exclude, skip_thread, max_paths=MAX_PATHS):
        # type: (List[Any], int, int) -> None
        self.visited = self._new_visited()  # type: Any
        self.skip_thread = skip_thread
        self.max_paths = max_paths
        self.sites = {}  # type: Dict[Tuple[str, ...], List[int]]
        self.folded_paths = 0
        self.objects = 0
        self.bytes = 0
        self.started = time.monotonic()
        self.cpu = 0.0
        self.longest = 0.0  # the longest slice, seconds of this thread's CPU
        self.wall_longest = 0.0
        self.longest_phase = ""
        self.slices = 0
        self.partial = False
        self.done = False
        self.phase = "modules"
        self.notes = []  # type: List[str]
        self._gc_owed = False  # automatic collections turned off by the census
        self._gc_hold = False  # ... and kept off between slices (a pass over the gc's lists)
        # retainers (heapspy_agent.retainers): objects whose path is noted when counted
        self._targets = None  # type: Optional[Set[int]]
        self._hits = {}  # type: Dict[int, Tuple[str, ...]]
        self._sizers = {}  # type: Dict[type, Any]
        self._names = {}  # type: Dict[type, str]
        self._types = {}  # type: Dict[type, Tuple[str, Any, int, bool, bool]]
        self._gc_head = sys.getsizeof([]) - list.__sizeof__([])
        probe = _Probe()
        self._preheader = sys.getsizeof(probe) - _object_sizeof(probe) - self._gc_head
        self._boundary = set()  # type: Set[int]
        self._stack = []  # type: List[Any]
        self._roots = self._root_source(exclude)
        self.visited.add(id(self._roots))
        self._exclude = exclude
        for obj in (
            self,
            self.__dict__,
            self.visited,
            self.visited.__dict__,
            getattr(self.visited, "chunks", None),
            self.sites,
            self._hits,
            self._stack,
            self._boundary,
            self._sizers,
            self._names,
            self._types,
            self.notes,
        ):
            self.visited.add(id(obj))

    def _new_visited(self):  # type: () -> Any
        return Bitmap()

    def set_targets(self, addresses):  # type: (List[int]) -> bool
        """Note the path (root, containers) of the objects at these addresses when the
        walk counts them; before the walk starts. False when it cannot."""
        self._targets = set(addresses)
        self.visited.add(id(self._targets))
        return True

    def target_paths(self, addresses):  # type: (List[int]) -> List[Optional[Tuple[str, ...]]]
        """The path each of ``addresses`` was counted under; None: not reached."""
        return [self._hits.get(a) for a in addresses]

    # --- sizes and names: C code only --------------------------------------------------
    def _sizer(self, tp):  # type: (type) -> Any
        """The C ``__sizeof__`` that ``sys.getsizeof`` would reach for instances of
        ``tp`` (skipping one written in Python), and what getsizeof adds to it."""
        plain = _plain_hash(tp)
        found = self._sizers.get(tp) if plain else None
        if found is not None:
            return found
        method = _object_sizeof
        try:
            for base in _type_mro(tp):
                attr = _type_dict(base).get("__sizeof__")
                if attr is not None and type(attr) is _C_METHOD:
                    method = attr
                    break
        except Exception:  # noqa: BLE001 - an odd type: object.__sizeof__ it is
            method = _object_sizeof
        flags = _type_flags(tp)
        extra = self._gc_head if flags & _HAVE_GC else 0
        if flags & _PREHEADER and sys.version_info >= (3, 11):
            extra += self._preheader
        found = (method, extra)
        if plain:
            self._sizers[tp] = found
        return found

    def _type_info(self, tp):  # type: (type) -> Tuple[str, Any, int, bool, bool]
        """What the walk needs of a type, once: its name, sizer, header, module-ness,
        dict-ness."""
        method, extra = self._sizer(tp)
        is_dict = bool(_type_flags(tp) & _DICT_SUBCLASS)
        info = (self.type_name(tp), method, extra, _is_module(tp), is_dict)
        if _plain_hash(tp):
            self._types[tp] = info
        return info

    def size(self, obj):  # type: (Any) -> int
        method, extra = self._sizer(type(obj))
        try:
            size = method(obj)
        except Exception:  # noqa: BLE001
            try:
                size = _object_sizeof(obj)
            except Exception:  # noqa: BLE001
                size = 0
        return int(size) + int(extra) if type(size) is int else int(extra)

    def type_name(self, tp):  # type: (type) -> str
        plain = _plain_hash(tp)
        name = self._names.get(tp) if plain else None
        if name is None:
            try:
                module = _type_module(tp)
                short = _type_name(tp)
                if type(module) is not str or module == "builtins":
                    name = short
                else:
                    name = module + "." + short
            except Exception:  # noqa: BLE001
                name = "?"
            name = _clip(name)
            if plain:
                self._names[tp] = name
        return name

    # --- roots -------------------------------------------------------------------------
    def _root_source(self, exclude):  # type: (List[Any]) -> Any
        """(label, object, is_class) for every root, in the documented order."""
        modules = []
        for name, module in list(sys.modules.items()):
            if type(name) is not str or not _is_module(type(module)):
                continue
            if name == "heapspy_agent" or name.startswith("heapspy_agent."):
                continue
            modules.append((name, module))
        modules.sort(key=lambda item: item[0])
        namespaces = []
        for name, module in modules:
            self._boundary.add(id(module))
            try:
                namespace = _module_dict(module)  # ModuleType's own getter
            except Exception:  # noqa: BLE001
                continue
            if type(namespace) is not dict:
                continue
            self._boundary.add(id(namespace))
            namespaces.append((name, module, namespace))
            # a class defined here is a root of its own: never entered from elsewhere
            for value in list(namespace.values()):
                if _is_class(value) and _own_class(value, name):
                    self._boundary.add(id(value))
        del modules
        yield None  # boundaries known: the walk may start
        for name, module, namespace in namespaces:
            self._count(module, (name, "module"))
            self._count(namespace, (name, "dict"))
            for key, value in list(namespace.items()):
                label = _dotted(name, key)
                own = _is_class(value) and _own_class(value, name)
                yield label, value, own
        del namespaces
        self.phase = "threads"
        frames = sys._current_frames()
        names = {t.ident: t.name for t in threading.enumerate()}
        order = sorted((names.get(i) != "MainThread", i) for i in frames)
        for _, ident in order:
            if ident == self.skip_thread:
                continue
            chain = []  # type: List[Any]
            frame = frames[ident]  # type: Any
            while frame is not None and len(chain) < 1000:
                chain.append(frame)
                frame = frame.f_back
            thread = _clip(names.get(ident, "%d" % ident))
            for frame in reversed(chain):
                label = _thread_label(thread, frame)
                for value in self._frame_locals(frame):
                    yield label, value, False
            del chain, frame
        del frames, names, order
        self.phase = "excluded"
        yield "", exclude, False  # walked without counting: the agent's own objects
        self.phase = "unowned"
        unowned = self._unowned()
        self.visited.add(id(unowned))
        for label, obj in unowned:
            yield label, obj, False

    def _frame_locals(self, frame):  # type: (Any) -> List[Any]
        """The values of a running frame's locals, read as CPython itself offers them:
        its tp_traverse before 3.11 (the fast locals), ``f_locals`` after (3.13: a
        read-through proxy; 3.11-3.12: the frame's own snapshot dict, as a debugger
        reads it)."""
        code = frame.f_code
        if not code.co_flags & 0x1:  # not CO_OPTIMIZED: module or class body
            return []
        if sys.version_info < (3, 11):
            skip = (frame.f_back, code, frame.f_globals, frame.f_builtins)
            return [v for v in gc.get_referents(frame) if not any(v is s for s in skip)]
        try:
            return list(frame.f_locals.values())
        except Exception:  # noqa: BLE001
            return []

    def _unowned(self):  # type: () -> Any
        """What the gc tracks and no root reached. An object referred to from outside
        that set (its reference count says so) is held by C code, the interpreter or a
        running frame's temporaries, with all it reaches; the rest is garbage waiting
        for a collection. Yields (None, None) now and then: a place to end a slice."""
        visited = self.visited
        rest = [[]]  # type: List[Any]  # rest[0]: a sentinel whose count calibrates
        visited.add(id(rest))
        visited.add(id(rest[0]))
        own = []  # the agent thread's frames (tracked objects before 3.11)
        frame = sys._getframe()  # type: Any
        while frame is not None:
            own.append(frame)
            frame = frame.f_back
        self._exclude_walk(own)
        del own, frame
        n = 0
        for table in (self.sites, self._sizers, self._types):  # the walk's own entries
            for key, value in list(table.items()):
                visited.add(id(key))
                visited.add(id(value))
                n += 1
                if not n & 2047:
                    yield None, None
        for _ in self._tracked_unvisited(rest):
            yield None, None
        ids = {id(rest[i]): i for i in range(len(rest))}
        inner = [0] * len(rest)
        for n in range(len(rest)):
            for ref in gc.get_referents(rest[n]):
                at = ids.get(id(ref))
                if at is not None:
                    inner[at] += 1
            if not n & 1023:
                yield None, None
        del ids
        getrefcount = sys.getrefcount
        base = 0
        held = []  # type: List[Any]
        for i in range(len(rest)):
            obj = rest[i]
            count = getrefcount(obj)
            if i == 0:
                base = count
            elif count - base - inner[i] > 0:
                held.append(obj)
            del obj
        del inner
        garbage = rest[1:]
        del rest
        for obj in held:
            yield HELD_OUTSIDE, obj
        del held
        for obj in garbage:
            yield GARBAGE, obj

    def _tracked_unvisited(self, rest):  # type: (List[Any]) -> Any
        """Append what the gc tracks and the walk did not visit to ``rest``; yields now
        and then. ``gc.get_objects`` lists a generation in one call (a pause as long as
        the generation: ~30 ms per million objects)."""
        for generation in range(3):
            found = gc.get_objects(generation)
            self.visited.add(id(found))
            for _ in self._unvisited(found, rest):
                yield None
            del found

    def _unvisited(self, found, rest):  # type: (List[Any], List[Any]) -> Any
        """Append the objects of ``found`` not visited to ``rest``; yields now and then."""
        visited = self.visited
        for i in range(len(found)):
            if id(found[i]) not in visited:
                rest.append(found[i])
            if not i & 4095:
                yield None

    # --- the walk ----------------------------------------------------------------------
    def _count(self, obj, path):  # type: (Any, Tuple[str, ...]) -> None
        if not self.visited.add(id(obj)):
            return
        self._record(path, self.size(obj))

    def _record(self, path, nbytes):  # type: (Tuple[str, ...], int) -> None
        self.objects += 1
        self.bytes += nbytes
        site = self.sites.get(path)
        if site is None:
            if len(self.sites) >= self.max_paths:
                self.folded_paths += 1
                path = (OTHER, path[-1])  # the type is kept: -top stays right
                site = self.sites.get(path)
            if site is None:
                site = self.sites[path] = [0, 0]
        site[0] += 1
        site[1] += nbytes

    def step(self, budget):  # type: (float) -> bool
        """Walk for at most ``budget`` seconds; True once the census is complete."""
        if self.done:
            return True
        t0 = time.perf_counter()
        c0 = time.thread_time()
        # No collection inside a slice: the walk's own few allocations would otherwise
        # start one (a full one takes ~80 ms at 10 M objects) and the slice would last as
        # long. The target's threads that run meanwhile have theirs after the slice.
        if gc.isenabled():
            gc.disable()
            self._gc_owed = True
        try:
            self._walk(t0 + budget)
        finally:
            if self._gc_owed and not self._gc_hold:
                self._gc_owed = False
                gc.enable()
            self.wall_longest = max(self.wall_longest, time.perf_counter() - t0)
            spent = time.thread_time() - c0  # the OS and other threads may delay a slice
            self.cpu += spent
            self.slices += 1
            if spent > self.longest:
                self.longest = spent
                self.longest_phase = self.phase
        return self.done

    def stop(self):  # type: () -> None
        """End here: what was counted so far is the (partial) census."""
        if not self.done:
            self.partial = True
            self.done = True
        self._release()

    def close(self):  # type: () -> None
        """Free what the walk holds outside Python (nothing here: see NativeCensus)."""
        self.stop()

    def _release(self):  # type: () -> None
        self._gc_hold = False
        if self._gc_owed:
            self._gc_owed = False
            gc.enable()
        self._stack = []
        self._roots = iter(())
        self._exclude = []

    def _walk(self, deadline):  # type: (float) -> None
        stack = self._stack
        visited = self.visited
        chunks = visited.chunks
        boundary = self._boundary
        types = self._types
        sites = self.sites
        targets = self._targets
        get_referents = gc.get_referents
        clock = time.perf_counter
        n = 0
        while True:
            if not stack:
                try:
                    root = next(self._roots)
                except StopIteration:
                    self.done = True
                    self._release()
                    return
                if root is None or root[0] is None:
                    if clock() >= deadline:
                        return
                    continue
                label, obj, is_class = root
                if label == "":  # the agent's own objects: marked, not counted
                    stack.append([list(obj), 0, None])
                    del obj, root
                    continue
                if is_class:
                    if not visited.add(id(obj)):
                        del obj, root
                        continue  # the same class under a second name
                    self._record((label, "type"), self.size(obj))
                    try:
                        attrs = list(_type_dict(obj).items())
                        namespace = get_referents(_type_dict(obj))  # the dict inside
                    except Exception:  # noqa: BLE001
                        attrs, namespace = [], []
                    for inner in namespace:
                        if type(inner) is dict and visited.add(id(inner)):
                            self._record((label, "dict"), self.size(inner))
                    # the rest of the class (its mro, bases, ...) after its attributes
                    stack.append([get_referents(obj), 0, (label, "type")])
                    for key, value in reversed(attrs):
                        if key not in ("__dict__", "__weakref__"):
                            stack.append([[value], 0, (_dotted(label, key),)])
                    del attrs, namespace, obj, root
                    continue
                stack.append([[obj], 0, (label,)])
                del obj, root
            entry = stack[-1]
            items, pos, path = entry[0], entry[1], entry[2]
            if pos >= len(items):
                if len(entry) > 3:  # a big container: its next chunk, if any
                    entry[0], entry[1] = _next_chunk(entry[3]), 0
                    if entry[0]:
                        continue
                stack.pop()
                continue
            obj = items[pos]
            entry[1] = pos + 1
            address = id(obj)
            if address in boundary:
                continue
            # visited.add, inlined: this loop runs once per object of the heap
            chunk = chunks.get(address >> 20)
            if chunk is None:
                chunk = chunks[address >> 20] = bytearray(8192)
            offset = (address & 0xFFFFF) >> 4
            bit = 1 << (offset & 7)
            offset >>= 3
            if chunk[offset] & bit:
                continue
            chunk[offset] |= bit
            tp = type(obj)
            if targets and path is not None and address in targets:
                self._hits[address] = path
            if path is None:  # excluded: marked as seen, not counted
                if _is_module(tp) or (_type_flags(tp) & _TYPE_SUBCLASS and not _agent_class(obj)):
                    continue
                stack.append([get_referents(obj), 0, None])
                del obj
                continue
            info = types.get(tp) if type(tp) is type or _plain_hash(tp) else None
            if info is None:
                info = self._type_info(tp)
            name, method, extra, is_module, is_dict = info
            try:
                size = method(obj) + extra
            except Exception:  # noqa: BLE001 - sized as object.__sizeof__ would
                size = self.size(obj)
            leaf = path + (name,)
            site = sites.get(leaf)
            if site is None:
                self._record(leaf, size)
            else:
                self.objects += 1
                self.bytes += size
                site[0] += 1
                site[1] += size
            if is_module:
                continue  # a module outside sys.modules: its globals are not ours
            child_path = leaf if len(path) <= MAX_DEPTH else path
            if tp in _CHUNKED and len(obj) > CHUNK:
                stack.append([[], 0, child_path, _chunks(obj, tp)])
                del obj
                continue
            children = get_referents(obj)
            if is_dict:  # tp_traverse skips the keys of an all-str dict, which count
                children.extend(_dict_keys(obj))
            if children:
                if tp is _FrameType:
                    children = [c for c in children if id(c) not in boundary]
                stack.append([children, 0, child_path])
            del obj, children
            n += 1
            if n >= CHECK_EVERY:
                n = 0
                if clock() >= deadline:
                    return

    def _exclude_walk(self, roots):  # type: (List[Any]) -> None
        """Mark everything the agent's own objects reach (short of the boundaries) as
        seen, without counting it: what is left unreached after this is the target's."""
        todo = list(roots)
        visited = self.visited
        boundary = self._boundary
        while todo:
            obj = todo.pop()
            address = id(obj)
            if address in boundary or not visited.add(address):
                continue
            tp = type(obj)
            if _is_module(tp):
                continue
            if _type_flags(tp) & _TYPE_SUBCLASS and not _agent_class(obj):
                continue
            todo.extend(gc.get_referents(obj))

    def progress(self):  # type: () -> Dict[str, Any]
        return {
            "objects": self.objects,
            "bytes": self.bytes,
            "elapsed": time.monotonic() - self.started,
            "cpu": self.cpu,
            "longest_slice": self.longest,
            "longest_slice_wall": self.wall_longest,
            "phase": self.phase,
            "bookkeeping": self.visited.memory(),
            "walker": self.walker,
        }

    def result_frames(self, per_frame, keep=SEND_PATHS):
        # type: (int, int) -> List[Dict[str, Any]]
        """The census as CENSUS bodies of at most ``per_frame`` paths; the last one says
        ``done`` and carries the totals. The ``keep`` largest paths by bytes are sent
        as they are, the rest folded into (``[other]``, their type)."""
        ranked = sorted(self.sites.items(), key=lambda item: -item[1][1])
        merged = {}  # type: Dict[Tuple[str, ...], List[int]]
        for path, (objects, nbytes) in ranked[keep:]:
            key = (OTHER, path[-1])
            site = merged.get(key)
            if site is None:
                site = merged[key] = [0, 0]
            site[0] += objects
            site[1] += nbytes
            if path[0] != OTHER:
                self.folded_paths += 1
        sites = [[list(path), v[0], v[1]] for path, v in ranked[:keep]]
        sites.extend([list(path), v[0], v[1]] for path, v in merged.items())
        bodies = [
            {"sites": sites[start : start + per_frame], "done": False}
            for start in range(0, max(len(sites), 1), per_frame)
        ]  # type: List[Dict[str, Any]]
        last = bodies[-1]
        last.update(self.progress())
        last["done"] = True
        last["partial"] = self.partial
        last["folded_paths"] = self.folded_paths
        last["notes"] = self.notes[:16]
        return bodies


MAX_BOOKKEEPING = 64 << 20  # the native walk's own memory: beyond, the census is partial


class _Marks:
    """The native walk's visited set, as the Python walk's Bitmap is used."""

    def __init__(self, walk):  # type: (Any) -> None
        self._cw = walk

    def add(self, address):  # type: (int) -> bool
        return self._cw.mark(address)  # type: ignore[no-any-return]

    def __contains__(self, address):  # type: (int) -> bool
        return self._cw.marked(address)  # type: ignore[no-any-return]

    def memory(self):  # type: () -> int
        return self._cw.stats()[3]  # type: ignore[no-any-return]


class _Bounds:
    """The native walk's boundaries (modules, their dicts, classes that are roots), as
    the Python walk's set of ids is filled."""

    def __init__(self, walk):  # type: (Any) -> None
        self._cw = walk

    def add(self, address):  # type: (int) -> None
        self._cw.boundary(address)


class NativeCensus(Census):
    """The same census (roots, order, paths, sizes), walked by ``census_walk.c``.

    Python still produces the roots, one at a time, and sizes the few objects it counts
    itself (modules, their dicts, classes that are roots); the objects a root reaches are
    marked, sized, counted and opened in C, a slice at a time (``cw_run`` stops at the
    slice's deadline). The C walk asks ``_classify`` once per type what to call it and
    how to size it, with the same rules as the Python walk."""

    walker = "native"

    def __init__(self, library, exclude, skip_thread, max_paths=MAX_PATHS):
        # type: (Any, List[Any], int, int) -> None
        self._name_list = [OTHER, "?"]  # type: List[str]
        self._name_ids = {OTHER: 0, "?": 1}  # type: Dict[str, int]
        self._roots_at = {}  # type: Dict[Tuple[str, ...], int]
        self._queue = []  # type: List[Tuple[bool, Any, int]]
        self._busy = False
        self._deadline = 0.0
        self._classify_ref = self._classify  # type: Optional[Callable[[type], Tuple[int, Any, int, bool]]]
        walk = library.new(
            self._classify_ref, _agent_class, MAX_DEPTH, max_paths, MAX_BOOKKEEPING, 0, 1
        )
        if walk is None:
            raise MemoryError("census walk")
        self._cw = walk
        Census.__init__(self, exclude, skip_thread, max_paths)
        self._boundary = _Bounds(walk)  # type: Any
        for obj in (self._name_list, self._name_ids, self._roots_at, self._queue,
                    self._classify_ref):  # fmt: skip
            walk.mark(id(obj))

    def _new_visited(self):  # type: () -> Any
        return _Marks(self._cw)

    def set_targets(self, addresses):  # type: (List[int]) -> bool
        return self._cw.targets(addresses)  # type: ignore[no-any-return]

    def target_paths(self, addresses):  # type: (List[int]) -> List[Optional[Tuple[str, ...]]]
        nodes = self._cw.target_paths(addresses)
        if not any(node >= 0 for node in nodes):
            return [None] * len(addresses)
        names = self._name_list
        paths = []  # type: List[Tuple[str, ...]]
        for parent, name, _objects, _nbytes in self._cw.nodes():
            paths.append((paths[parent] if parent >= 0 else ()) + (names[name],))
        return [paths[node] if 0 <= node < len(paths) else None for node in nodes]

    def _name_id(self, name):  # type: (str) -> int
        found = self._name_ids.get(name)
        if found is None:
            found = self._name_ids[name] = len(self._name_list)
            self._name_list.append(name)
        return found

    def _node(self, path):  # type: (Tuple[str, ...]) -> int
        node = self._roots_at.get(path)
        if node is None:
            node = -1
            for name in path:
                node = self._cw.node(node, self._name_id(name))
            if len(path) == 1:
                self._roots_at[path] = node
        return node

    def _classify(self, tp):  # type: (type) -> Tuple[int, Any, int, bool]
        try:
            info = self._types.get(tp) if _plain_hash(tp) else None
            if info is None:
                info = self._type_info(tp)
            name, method, extra, is_module, _ = info
            return (self._name_id(name), None if method is _object_sizeof else method,
                    int(extra), bool(is_module))  # fmt: skip
        except Exception:  # noqa: BLE001 - the C walk counts it as "?"
            return (1, None, 0, False)

    def _record(self, path, nbytes):  # type: (Tuple[str, ...], int) -> None
        self._cw.add(self._node(path), 1, nbytes)

    def _left_ns(self):  # type: () -> int
        return int((self._deadline - time.perf_counter()) * 1e9)

    def _walk_all(self):  # type: () -> None
        """Run the walk to its end, whatever the slice (the agent's own few objects)."""
        while self._cw.run(10**9) == 0:
            pass

    def _exclude_walk(self, roots):  # type: (List[Any]) -> None
        for obj in roots:
            self._cw.visit(obj, -1)
        self._walk_all()

    def _tracked_unvisited(self, rest):  # type: (List[Any]) -> Any
        """3.14: the gc's lists walked in C a slice at a time (``gc_step``), automatic
        collections kept off meanwhile (one moves objects from list to list: the pass would
        start again). Elsewhere, or where 3.14's gc state does not check out: 3.12+, one
        pass of PyUnstable_GC_VisitObjects, which lists nothing (one pause of ~20 ns a
        tracked object); before 3.12, as the Python walk does."""
        walk = self._cw
        if walk.gc_begin(rest, gc.get_threshold(), _collections()):
            self._gc_hold = True
            while True:
                done = walk.gc_step(self._left_ns(), _collections())
                if done:
                    break
                yield None
            self._gc_hold = False
            if done < 0:
                self.notes.append(
                    "the gc's lists changed under the census (collections, or no memory): "
                    "objects held outside Python roots may be missing"
                )
            return
        if self._cw.gc_unmarked(rest):
            yield None
            return
        yield from Census._tracked_unvisited(self, rest)

    def _unvisited(self, found, rest):  # type: (List[Any], List[Any]) -> Any
        i = 0
        while i < len(found):
            i = self._cw.unmarked(found, i, rest, self._left_ns())
            yield None

    def _walk(self, deadline):  # type: (float) -> None
        self._deadline = deadline
        walk = self._cw
        clock = time.perf_counter
        while True:
            if self._busy:
                left = deadline - clock()
                if left <= 0:
                    return
                rc = walk.run(int(left * 1e9))
                if rc == 0:
                    return
                self._busy = False
                if rc < 0:
                    self.notes.append(
                        "the walk's bookkeeping reached %d MiB: the census stops there"
                        % (MAX_BOOKKEEPING >> 20)
                    )
                    self.stop()
                    return
            if self._queue:
                enter, obj, node = self._queue.pop()
                if enter:
                    walk.visit(obj, node)
                else:
                    walk.push(obj, node)
                self._busy = True
                del obj
                continue
            try:
                root = next(self._roots)
            except StopIteration:
                self.done = True
                self._release()
                return
            if root is None or root[0] is None:
                if clock() >= deadline:
                    return
                continue
            label, obj, is_class = root
            del root
            self._busy = True
            if label == "":  # the agent's own objects: marked, not counted
                for item in list(obj):
                    walk.visit(item, -1)
            elif is_class:
                self._class_root(label, obj)
            else:
                walk.visit(obj, self._node((label,)))
            del obj

    def _class_root(self, label, cls):  # type: (str, Any) -> None
        """A class defined in its module: itself, its namespace, then each attribute as
        a root of its own (first to last), then the rest of what it refers to."""
        if not self.visited.add(id(cls)):
            return  # the same class under a second name
        self._record((label, "type"), self.size(cls))
        try:
            attrs = list(_type_dict(cls).items())
            namespace = gc.get_referents(_type_dict(cls))  # the dict inside
        except Exception:  # noqa: BLE001
            attrs, namespace = [], []
        for inner in namespace:
            if type(inner) is dict and self.visited.add(id(inner)):
                self._record((label, "dict"), self.size(inner))
        self._queue.append((False, cls, self._node((label, "type"))))
        for key, value in reversed(attrs):
            if key not in ("__dict__", "__weakref__"):
                self._queue.append((True, value, self._node((_dotted(label, key),))))

    def _release(self):  # type: () -> None
        Census._release(self)
        self._queue = []
        self._cw.stop()

    def close(self):  # type: () -> None
        self.stop()
        self._cw.free()
        # the bound method kept for the C walk refers back to this census: a cycle the
        # target's gc would only find at its next full collection
        self._classify_ref = None

    def _sync(self):  # type: () -> None
        objects, nbytes, _paths, _memory, folded, _stack, _orphans = self._cw.stats()
        self.objects, self.bytes, self.folded_paths = objects, nbytes, folded

    def progress(self):  # type: () -> Dict[str, Any]
        self._sync()
        return Census.progress(self)

    def result_frames(self, per_frame, keep=SEND_PATHS):
        # type: (int, int) -> List[Dict[str, Any]]
        self._sync()
        names = self._name_list
        paths = []  # type: List[Tuple[str, ...]]
        sites = {}  # type: Dict[Tuple[str, ...], List[int]]
        for parent, name, objects, nbytes in self._cw.nodes():
            path = (paths[parent] if parent >= 0 else ()) + (names[name],)
            paths.append(path)
            if objects:
                sites[path] = [objects, nbytes]
        self.sites = sites
        return Census.result_frames(self, per_frame, keep)


def new_census(exclude, skip_thread, library):
    # type: (List[Any], int, Optional[census_walk.Library]) -> Census
    """The native walk where the shim's library serves this interpreter
    (``census_walk.load``), else the Python one: same roots, order, paths and sizes."""
    if library is not None:
        try:
            return NativeCensus(library, exclude, skip_thread)
        except MemoryError:
            pass
    return Census(exclude, skip_thread)
