"""Attribute and key names on a retention path: ``__main__.SHIPPER .pending (list)``
rather than ``__main__.SHIPPER > __main__.Shipper > list``.

The census walk names only the root and the types of the containers on the way (naming
every edge of a heap walk would cost a dict per object). After a retainer walk, the
agent names the few paths it reports on: from the root object (found again by its label:
a module global, a class attribute, or a thread's frame locals), it follows the path's
types one step at a time, and calls each step by the attribute (``.pending``) or the dict
key (``['users']``, ``[42]``) that holds an object of the next type. Where several do,
the one holding most of the walk's sampled objects (by identity, after the last step)
is taken; where none of several holds any, the step stays unnamed.

No code of the target runs: an instance's attributes are read only through the C
descriptors its genuine types' own dicts hold (the builtin ``__dict__`` getset, slots'
member descriptors), never by attribute lookup, so no property, ``__getattr__`` or
``__getattribute__`` is called; dicts are exact ``dict``s read with ``dict.items`` and
copied a bounded slice at a time (one C call: no other thread runs inside), and keys are
compared only when they are exact ``str``, so no ``__eq__`` or ``__hash__`` runs. Only
exact ``str`` and ``int`` keys are named. Bounded: MAX_CHECKS elements looked at per path,
and MAX_DICTS instance dicts read (from 3.11, reading one makes it: see there).
"""

import gc
import itertools
import sys
import threading

from heapspy_agent import census as census_mod
from heapspy_agent.schema import OWN_DICT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple  # noqa: F401

MAX_CHECKS = 50000  # elements looked at while naming one path (~10-25 ms)
MAX_KEY = 40  # characters of an attribute name or a key kept
# instances' __dict__ read per path: from 3.11 an instance keeps its attributes without a
# dict until one is asked for, and reading __dict__ makes it one (~100 bytes to 1 KiB
# each, kept by the instance): the target pays for at most this many per path
MAX_DICTS = 64

_GetSet = type(type.__dict__["__dict__"])  # the builtin getset_descriptor type
_Member = type(type.__dict__["__weakrefoffset__"])  # the builtin member_descriptor type
_getset_get = _GetSet.__get__
_member_get = _Member.__get__
_dict_items = dict.items
_I64 = 1 << 63
_OWN = object()  # the key of an instance's own attribute dict among its attributes


class _Budget:
    __slots__ = ("left", "dicts")

    def __init__(self, left):  # type: (int) -> None
        self.left = left
        self.dicts = MAX_DICTS


def _items(mapping, budget, charge=True):
    # type: (Dict[Any, Any], _Budget, bool) -> List[Tuple[Any, Any]]
    """An exact dict's (key, value) pairs, at most the budget's: copied in one C call;
    ``charge``: counted against the budget now (else as they are looked at)."""
    if budget.left <= 0:
        return []
    pairs = list(itertools.islice(_dict_items(mapping), budget.left))
    if charge:
        budget.left -= len(pairs)
    return pairs


def _short(text):  # type: (str) -> str
    return text if len(text) <= MAX_KEY else text[: MAX_KEY - 3] + "..."


def _key_name(key):  # type: (Any) -> str
    if type(key) is str:
        name = "[%r]" % key[:MAX_KEY]  # repr of an exact str: C code, escapes included
        if len(key) > MAX_KEY or len(name) > MAX_KEY + 4:
            name = name[: MAX_KEY + 1] + "...]"
        return name
    if type(key) is int and -_I64 <= key < _I64:
        return "[%d]" % key
    return ""


def _attributes(obj, budget):  # type: (Any, _Budget) -> List[Tuple[Any, Any]]
    """(".name", value) of an instance, and (_OWN, its attribute dict): its ``__dict__``
    through the builtin getset its class holds, its slots through their member
    descriptors. Nothing else is read."""
    tp = type(obj)
    try:
        mro = census_mod._type_mro(tp)
    except Exception:  # noqa: BLE001
        return []
    if type(mro) is not tuple:
        return []
    out = []  # type: List[Tuple[Any, Any]]
    seen_dict = False
    for base in mro:
        if not census_mod._is_class(base):
            return []  # not a genuine type: leave this object unnamed
        try:
            namespace = census_mod._type_dict(base)
            pairs = list(namespace.items())  # a mappingproxy of the type's exact dict
        except Exception:  # noqa: BLE001
            return []
        budget.left -= len(pairs)
        for key, value in pairs:
            if type(key) is not str:
                continue
            kind = type(value)
            if key == "__dict__" and not seen_dict:
                seen_dict = True  # the first one is what lookup uses
                if kind is not _GetSet or budget.dicts <= 0:
                    continue
                budget.dicts -= 1
                try:
                    attrs = _getset_get(value, obj, tp)
                except Exception:  # noqa: BLE001
                    continue
                if type(attrs) is dict:
                    out.append((_OWN, attrs))  # where the walk went through it
                    out.extend(("." + _short(k), v) for k, v in _items(attrs, budget)
                               if type(k) is str)  # fmt: skip
            elif kind is _Member:
                try:
                    out.append(("." + _short(key), _member_get(value, obj, tp)))
                except Exception:  # noqa: BLE001 - an empty slot
                    continue
        if budget.left <= 0:
            break
    return out


def _attr_name(key):  # type: (Any) -> str
    return "." + _short(key) if type(key) is str else ""


def _no_name(key):  # type: (Any) -> str
    if key is _OWN:
        return OWN_DICT
    return key if type(key) is str else ""


def _children(obj, budget, attrs=False):
    # type: (Any, _Budget, bool) -> Tuple[Callable[[Any], str], List[Any], List[Any]]
    """What ``obj`` holds: (namer, keys, objects); ``namer(keys[i])`` names ``objects[i]``
    (called only for the one chosen: naming is dearer than looking). ``attrs``: ``obj``
    is an instance's attribute dict, its keys named as attributes."""
    tp = type(obj)
    if budget.left <= 0:
        return _no_name, [], []
    if tp is dict:  # copied, bounded; each item is counted as it is looked at
        pairs = _items(obj, budget, charge=False)
        return (_attr_name if attrs else _key_name), [k for k, _ in pairs], [v for _, v in pairs]
    if tp is list or tp is tuple:
        part = list(obj[: budget.left])
        return _no_name, [None] * len(part), part
    if census_mod._is_class(obj) or census_mod._is_module(tp):
        return _no_name, [], []  # boundaries of the walk: never entered
    named = _attributes(obj, budget)
    if named:
        return _no_name, [k for k, _ in named], [v for _, v in named]
    part = gc.get_referents(obj)[: budget.left]
    return _no_name, [None] * len(part), part


def _held(obj, ids, budget):  # type: (Any, Set[int], _Budget) -> int
    """How many of ``ids`` ``obj`` holds directly."""
    objects = _children(obj, budget)[2][: max(0, budget.left)]
    budget.left -= len(objects)
    return len({id(child) for child in objects if id(child) in ids})


def _follow(census, obj, types, ids, budget, attrs=False):
    # type: (Any, Any, Tuple[str, ...], Set[int], _Budget, bool) -> Tuple[int, List[str]]
    """The best way down ``types`` from ``obj``: (sampled objects held at its end, the
    name of each step). A step stays unnamed where several objects of its type held none
    of the sampled objects, or where the budget ran out before it could tell."""
    if not types:
        return _held(obj, ids, budget), []
    want = types[0]
    namer, keys, objects = _children(obj, budget, attrs)
    cut = budget.left <= 0  # what obj holds may not all have been seen
    matches = {}  # type: Dict[int, bool]
    best = None  # type: Optional[Tuple[int, int, List[str]]]
    tried = 0
    for i in range(len(objects)):
        budget.left -= 1
        if budget.left < 0:
            cut = True
            break
        tp = type(objects[i])
        match = matches.get(id(tp))  # by id: a metaclass's __hash__ is never called here
        if match is None:
            match = matches[id(tp)] = census.type_name(tp) == want
        if not match:
            continue
        tried += 1
        inner = keys[i] is _OWN  # identity: a key of the target's may not be compared
        held, rest = _follow(census, objects[i], types[1:], ids, budget, inner)
        if best is None or held > best[0]:
            best = (held, i, rest)
        if budget.left <= 0:
            cut = True
            break
    if best is None or (best[0] == 0 and (tried > 1 or cut)):
        return 0, [""] * len(types)  # nothing there, or no telling which
    return best[0], [namer(keys[best[1]])] + best[2]


def _roots(census, label, budget):  # type: (Any, str, _Budget) -> Iterator[Any]
    """The objects the census walked under the root ``label``, found the same way."""
    if label.startswith("thread "):
        frames = sys._current_frames()
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, top in list(frames.items()):
            if ident == census.skip_thread:
                continue
            thread = census_mod._clip(names.get(ident, "%d" % ident))
            depth = 0
            frame = top  # type: Any
            while frame is not None and depth < 1000:
                depth += 1
                if census_mod._thread_label(thread, frame) == label:
                    for value in census._frame_locals(frame):
                        yield value
                frame = frame.f_back
        return
    for name, module in _items(sys.modules, budget):
        if type(name) is not str or not label.startswith(name + "."):
            continue
        if not census_mod._is_module(type(module)):
            continue
        rest = label[len(name) + 1 :]
        try:
            namespace = census_mod._module_dict(module)
        except Exception:  # noqa: BLE001
            continue
        if type(namespace) is not dict:
            continue
        for key, value in _items(namespace, budget):
            if type(key) is not str:
                continue
            if key == rest:
                yield value
            elif (rest.startswith(key + ".") and census_mod._is_class(value)
                  and census_mod._own_class(value, name)):  # fmt: skip
                attr = rest[len(key) + 1 :]
                for inner, found in list(census_mod._type_dict(value).items()):
                    if type(inner) is str and inner == attr:
                        yield found


def name_path(census, path, ids):  # type: (Any, Tuple[str, ...], Set[int]) -> List[str]
    """One name per element of ``path`` (root, then container types): the attribute or
    key by which the previous element holds it, or "" (the root; unnamed steps)."""
    unnamed = [""] * len(path)
    if len(path) < 3:
        return unnamed  # the root's object alone: nothing to name
    budget = _Budget(MAX_CHECKS)
    best = None  # type: Optional[Tuple[int, List[str]]]
    tried = 0
    try:
        for root in _roots(census, path[0], budget):
            if census.type_name(type(root)) != path[1] or census_mod._is_class(root):
                continue
            tried += 1
            held, names = _follow(census, root, path[2:], ids, budget)
            if best is None or held > best[0]:
                best = (held, names)
            if budget.left <= 0:
                break
    except Exception:  # noqa: BLE001 - a container changed meanwhile: unnamed
        return unnamed
    if best is None or (tried > 1 and best[0] == 0):
        return unnamed
    return ["", ""] + best[1]
