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
        return by_type

    cells = HANDLER.__closure__
    return {
        "census_app.CACHE": walk([CACHE]),
        "census_app.Registry.items": walk([Registry.items]),
        "census_app.HANDLER": walk([cells[0].cell_contents]),
        "census_app.ARRAY": walk([ARRAY]) if ARRAY is not None else None,
    }
