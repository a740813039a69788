"""Three leaks, each held by a different kind of root, for the retainers of leak sites.

``Shipper.buffer_line`` keeps lines in ``SHIPPER.pending`` (a module global's attribute
list); ``Registry.register`` keeps entries in ``Registry.entries`` (a class attribute);
``keep_local`` keeps chunks in ``kept``, a local of the ``local-worker`` thread's frame
``local_worker`` (no module global reaches it). Each grows by ~1 KiB objects every
millisecond (up to LIMIT each), so that heapspy, attached after the start, samples them.
Usage: retained_leaks.py. Prints ``READY <pid>``. Python 3.8 syntax.
"""

import os
import threading
import time

LIMIT = 30000  # objects per leak: ~30 MB each at most


class Shipper:
    def __init__(self):
        self.pending = []

    def buffer_line(self, i):
        self.pending.append(b"%07d" % i + bytes(1000))


class Registry:
    entries = []

    @classmethod
    def register(cls, i):
        cls.entries.append(b"%07d" % i + bytes(1000))


SHIPPER = Shipper()


def keep_local(kept, i):
    kept.append(b"%07d" % i + bytes(1000))


def local_worker():
    kept = []
    for i in range(LIMIT):
        keep_local(kept, i)
        time.sleep(0.001)
    threading.Event().wait()


def main():
    threading.Thread(target=local_worker, name="local-worker", daemon=True).start()
    print("READY %d" % os.getpid(), flush=True)
    for i in range(LIMIT):
        SHIPPER.buffer_line(i)
        Registry.register(i)
        time.sleep(0.001)
    threading.Event().wait()


if __name__ == "__main__":
    main()
