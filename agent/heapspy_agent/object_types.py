"""The type of every live sampled block, for dumps split by type.

At dump time (not every interval: it visits every live sample) the agent gathers the type
objects it can reach -- every class is a subclass of ``object``, so
``object.__subclasses__()`` followed recursively reaches every class that has ever had
an instance -- and hands their addresses to the shim, which looks at each live sampled
block and accepts a type only when the block holds a pointer to one of them where that
type's objects start (Cargo-free/object_layout.c). The list holds the types alive for the
length of the call. Every attribute is read through ``type``'s own C getters: a metaclass
cannot run code here.

Names are those of the census: ``module.Name``, builtins bare (``dict``, ``bytes``).
"""

import sys
from typing import Any, Dict, List, Set, Tuple

from heapspy_agent.shim import Shim

_subclasses = type.__dict__["__subclasses__"]
_type_name = type.__dict__["__name__"].__get__
_type_module = type.__dict__["__module__"].__get__
_type_basicsize = type.__dict__["__basicsize__"].__get__

MAX_TYPES = 1_000_000  # beyond this the rest of the classes are not looked for
MAX_NAME = 200


def reachable_types(limit: int = MAX_TYPES) -> List[type]:
    """Every class reachable from ``object`` through ``__subclasses__``, each once.
    Keyed by id: a metaclass's ``__eq__``/``__hash__`` must not run."""
    seen = {id(object): object}
    todo = [object]
    while todo and len(seen) < limit:
        for sub in _subclasses(todo.pop()):
            if id(sub) not in seen:
                seen[id(sub)] = sub
                todo.append(sub)
    return list(seen.values())


def type_name(tp: type) -> str:
    """``module.Name``; builtins without their module (the census's naming)."""
    try:
        module = _type_module(tp)
        short = _type_name(tp)
    except Exception:  # noqa: BLE001 - a broken __module__ entry of a heap type
        return "?"
    name = short if type(module) is not str or module == "builtins" else module + "." + short
    return str(name)[:MAX_NAME]


def min_sizes(types: List[type]) -> List[int]:
    """The fewest bytes of an instance's object part: ``__basicsize__``, except for ``str``,
    whose compact objects (the common ones) are smaller than ``PyUnicodeObject``."""
    small_str = sys.getsizeof("")
    return [small_str if tp is str else int(_type_basicsize(tp)) for tp in types]


def classify(shim: Shim, exclude: Set[int]) -> Dict[str, List[Tuple[str, int, int, float, float]]]:
    """Live samples per stack id (as a string, the wire's key) and type name: rows of
    (type name, count, bytes, estimated count, estimated bytes). The name is "" for a
    block that holds no object (a buffer, a list's item array, NumPy data). Stacks in
    ``exclude`` (the agent's own) are left out."""
    types = reachable_types()
    rows = shim.classify_live(types, min_sizes(types))
    names: Dict[int, str] = {}
    out: Dict[str, List[Tuple[str, int, int, float, float]]] = {}
    merged: Dict[Tuple[int, str], List[Any]] = {}
    for r in rows:
        if r.stack_id in exclude:
            continue
        if r.type_index < 0:
            name = ""
        else:
            name = names.get(r.type_index, "")
            if not name:
                name = names[r.type_index] = type_name(types[r.type_index])
        acc = merged.get((r.stack_id, name))
        if acc is None:  # two classes of one name (module.Name defined twice) merge
            merged[(r.stack_id, name)] = [
                r.live_count,
                r.live_bytes,
                r.est_live_count,
                r.est_live_bytes,
            ]
        else:
            acc[0] += r.live_count
            acc[1] += r.live_bytes
            acc[2] += r.est_live_count
            acc[3] += r.est_live_bytes
    for (sid, name), (n, b, en, eb) in merged.items():
        out.setdefault(str(sid), []).append((name, n, b, en, eb))
    return out
