"""What a worker keeps, in the places a heap census must name (imported by
census_target.py, so that its roots are ``census_app.NAME``, not ``__main__.NAME``)."""

import sys

N_CACHE = int(sys.argv[1]) if len(sys.argv) > 1 else 20000

# a module-level cache of small dicts: the root that holds the most
CACHE = {i: {"user": "user-%06d" % i, "seen": i * 1000003} for i in range(N_CACHE)}


class Registry:
    # a class-attribute registry
    items = [bytes(200) + bytes([i % 256]) for i in range(2000)]


def _make_handler():
    data = ["closure-%d" % i for i in range(3000)]

    def handler():
        return len(data)

    return handler


HANDLER = _make_handler()  # a closure-held list

try:
    import numpy
except ImportError:
    numpy = None
ARRAY = numpy.arange(250000, dtype="float64") if numpy is not None else None


def truth():
    """Bytes and objects by type under each root, by the target's own sys.getsizeof
    walk (each object once), for the census to be compared with."""
    import gc

    def walk(roots):
        seen = set()
        todo = list(roots)
        by_type = {}
        while todo:
            obj = todo.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            name = type(obj).__name__
            if type(obj).__module__ not in ("builtins", None):
                name = type(obj).__module__ + "." + name
            entry = by_type.setdefault(name, [0, 0])
            entry[0] += 1
            entry[1] += sys.getsizeof(obj)
            if isinstance(obj, (dict, list, tuple)):
                todo.extend(gc.get_referents(obj))
            if isinstance(obj, dict):  # str keys: not among a dict's referents
                todo.extend(obj.keys())
        return by_type

    cells = HANDLER.__closure__
    return {
        "census_app.CACHE": walk([CACHE]),
        "census_app.Registry.items": walk([Registry.items]),
        "census_app.HANDLER": walk([cells[0].cell_contents]),
        "census_app.ARRAY": walk([ARRAY]) if ARRAY is not None else None,
    }


CALLS = []  # any code of ours the census runs lands here: it must stay empty


class Trap:
    """Everything a careless walk would trip: attribute hooks, a property, a Python
    __sizeof__, a finalizer, and __slots__."""

    __slots__ = ("a", "b", "__weakref__")

    def __init__(self):
        object.__setattr__(self, "a", "slot-a " * 20)
        object.__setattr__(self, "b", list(range(100)))

    def __getattribute__(self, name):
        CALLS.append("getattribute " + name)
        return object.__getattribute__(self, name)

    def __getattr__(self, name):
        CALLS.append("getattr " + name)
        raise AttributeError(name)

    def __sizeof__(self):
        CALLS.append("sizeof")
        return 10**9

    def __del__(self):
        CALLS.append("del")

    @property
    def __class__(self):
        CALLS.append("__class__")
        return dict

    def __repr__(self):
        CALLS.append("repr")
        return "Trap"


class TrapDict(dict):
    """A builtin subclass with a Python __sizeof__ and __class__."""

    def __sizeof__(self):
        CALLS.append("dict sizeof")
        return 10**9

    @property
    def __class__(self):
        CALLS.append("dict __class__")
        return list


TRAPS = [Trap() for _ in range(10)] + [TrapDict(k=1) for _ in range(10)]


class _ModuleName:
    """Put where a class's __module__ string belongs: comparing it runs our code."""

    def __eq__(self, other):
        CALLS.append("__module__ __eq__")
        return False

    def __ne__(self, other):
        CALLS.append("__module__ __ne__")
        return True

    __hash__ = object.__hash__


class Misnamed:
    pass


Misnamed.__module__ = _ModuleName()


class _HashingMeta(type):
    """A metaclass whose classes hash and compare through our code (a walk that keys a
    dict by such a class runs it)."""

    def __hash__(cls):
        if ARMED:
            CALLS.append("metaclass __hash__")
        return type.__hash__(cls)

    def __eq__(cls, other):
        if ARMED:
            CALLS.append("metaclass __eq__")
        return cls is other


class Hashed(metaclass=_HashingMeta):
    __slots__ = ("payload",)

    def __init__(self, n):
        self.payload = "x" * n


HASHED = [Hashed(100) for _ in range(50)]
ARMED = True  # from here on, only a walk hashes these classes
