"""A target whose main thread is held inside an import the agent also needs.

Usage: import_gate.py RELEASE_FILE [TAG]
Prints "READY <pid>", then imports pickle, whose import of _compat_pickle is held by a
loader of ours until RELEASE_FILE exists: meanwhile the main thread holds pickle's module
lock and pickle is half-initialised in sys.modules. The agent needs pickle too (tracemalloc
imports it). Once released, the loader imports tracemalloc while still inside pickle's
import: if the agent had started importing (it would hold tracemalloc's lock, waiting for
pickle's), importlib would break that deadlock by handing this thread a half-initialised
tracemalloc. The loader also stops waiting as soon as another thread waits for pickle's
lock, so that this happens whenever the agent gets that far.

Then prints "IMPORTED whole=<both modules complete> early=<an agent module was imported
while pickle's import was under way>" and allocates until killed. SIGUSR1 prints
"VIOLATIONS <names>": modules imported by a thread other than the main one without the
global import lock held (an audit hook sees every import). Written for Python 3.8+.
"""

import _imp
import _thread
import os
import signal
import sys
import time
from importlib.machinery import PathFinder

RELEASE = sys.argv[1]
MAIN = _thread.get_ident()
violations = []
early = []


def audit(event, args):
    if event == "import" and _thread.get_ident() != MAIN and not _imp.lock_held():
        violations.append(str(args[0]))


def someone_waits_for(name):
    """Another thread waits for the module lock of ``name`` (which this thread holds)."""
    ref = getattr(sys.modules["_frozen_importlib"], "_module_locks", {}).get(name)
    lock = ref() if ref is not None else None
    return bool(lock is not None and lock.waiters)


def agent_imported():
    return any(name.startswith("heapspy_agent") for name in list(sys.modules))


class Gate:
    """Holds the execution of _compat_pickle (inside pickle's) until released.

    The wait is in the loader's exec_module, as in any module's top-level code: importlib
    calls finders with the global import lock held, loaders without it.
    """

    def __init__(self):
        self.done = False
        self.whole = None
        self.inner = None

    def find_spec(self, name, path=None, target=None):
        if name != "_compat_pickle" or self.done:
            return None
        self.done = True
        spec = PathFinder.find_spec(name, path)
        self.inner, spec.loader = spec.loader, self
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        while not os.path.exists(RELEASE):
            if someone_waits_for("pickle"):
                break
            time.sleep(0.01)  # bytecode runs between sleeps: pending calls, PEP 768
        early.append(agent_imported())
        import tracemalloc

        self.whole = hasattr(tracemalloc, "start") and hasattr(tracemalloc, "take_snapshot")
        self.inner.exec_module(module)


def report(_sig, _frame):
    print("VIOLATIONS %s" % ",".join(violations), flush=True)


sys.addaudithook(audit)
signal.signal(signal.SIGUSR1, report)
gate = Gate()
sys.meta_path.insert(0, gate)
print("READY %d" % os.getpid(), flush=True)
import pickle  # noqa: E402 - held by the gate

sys.meta_path.remove(gate)
whole = bool(gate.whole) and hasattr(pickle, "dumps") and hasattr(pickle, "Unpickler")
print("IMPORTED whole=%s early=%s" % (whole, early[0]), flush=True)
kept = []
while True:
    kept.append(pickle.dumps(list(range(50))))
    del kept[:-500]
    time.sleep(0.001)
