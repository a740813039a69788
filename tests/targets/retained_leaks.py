"""Three leaks, each held by a different kind of root, for the retainers of leak sites.

``Shipper.buffer_line`` keeps lines in ``SHIPPER.pending`` (an attribute of a module
global's instance, beside ``SHIPPER.sent``, another list holding a few); ``Registry.
register`` keeps entries in ``Registry.entries['recent']`` (a dict key of a class
attribute); ``keep_local`` keeps chunks in ``state.kept``, a slot of a local of the
``local-worker`` thread's frame ``local_worker`` (no module global reaches it). Each grows
by ~1 KiB objects every millisecond (up to LIMIT each), so that heapspy, attached after
the start, samples them.

``Shipper`` and the key beside ``'recent'`` are hostile: their property, ``__getattr__``,
``__eq__`` and ``__hash__`` append to ``CALLED`` (in the working directory) once armed:
naming a path's steps must call none of them.
Usage: retained_leaks.py. Prints ``READY <pid>``. Python 3.8 syntax.
"""

import os
import threading
import time

LIMIT = 30000  # objects per leak: ~30 MB each at most
ARMED = []  # non-empty once set up: the hostile methods record from then on


def _called(what):
    if ARMED:
        with open("CALLED", "a") as f:
            f.write(what + "\n")


class Hostile:
    """Whatever heapspy's agent must never call."""

    @property
    def size(self):
        _called("property")
        return 0

    def __getattr__(self, name):
        _called("__getattr__ " + name)
        raise AttributeError(name)

    def __eq__(self, other):
        _called("__eq__")
        return self is other

    def __hash__(self):
        _called("__hash__")
        return 7


class Shipper(Hostile):
    def __init__(self):
        self.sent = [b"%07d" % i + bytes(1000) for i in range(3)]
        self.pending = []

    def buffer_line(self, i):
        self.pending.append(b"%07d" % i + bytes(1000))


class Registry:
    entries = {Hostile(): [], "recent": []}

    @classmethod
    def register(cls, i):
        cls.entries["recent"].append(b"%07d" % i + bytes(1000))


SHIPPER = Shipper()


class LocalState:
    __slots__ = ("kept", "count")

    def __init__(self):
        self.kept = []


def keep_local(state, i):
    state.kept.append(b"%07d" % i + bytes(1000))


def local_worker():
    state = LocalState()
    for i in range(LIMIT):
        keep_local(state, i)
        time.sleep(0.001)
    threading.Event().wait()


def main():
    threading.Thread(target=local_worker, name="local-worker", daemon=True).start()
    ARMED.append(True)
    print("READY %d" % os.getpid(), flush=True)
    for i in range(LIMIT):
        SHIPPER.buffer_line(i)
        Registry.register(i)
        time.sleep(0.001)
    threading.Event().wait()


if __name__ == "__main__":
    main()
