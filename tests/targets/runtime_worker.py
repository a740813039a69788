"""Known runtime facts for heapspy to report: three named threads, one asyncio loop
with 7 tasks waiting on a future nobody sets, and cyclic garbage collected often.

Usage: runtime_worker.py
Prints "READY <pid>"; on SIGUSR1 prints "CALLBACKS <len(gc.callbacks)>" (0 once heapspy
has detached: the agent's GC timer must not stay behind).
"""

import asyncio
import gc
import os
import signal
import sys
import threading
import time


def make_cycles():
    while True:
        for _ in range(200):
            a = []
            a.append(a)
        time.sleep(0.005)


async def wait_forever(future):
    await future


async def serve(ready):
    future = asyncio.get_running_loop().create_future()
    for _ in range(7):
        asyncio.ensure_future(wait_forever(future))
    ready.set()
    await future


def loop_thread(ready):
    asyncio.run(serve(ready))


def on_usr1(signum, frame):
    print("CALLBACKS %d" % len(gc.callbacks), flush=True)


def main():
    signal.signal(signal.SIGUSR1, on_usr1)
    ready = threading.Event()
    threading.Thread(target=loop_thread, args=(ready,), name="event-loop", daemon=True).start()
    for name in ("cycle-maker", "idle-worker"):
        target = make_cycles if name == "cycle-maker" else (lambda: time.sleep(3600))
        threading.Thread(target=target, name=name, daemon=True).start()
    ready.wait()
    print("READY", os.getpid(), flush=True)
    while True:
        time.sleep(0.01)
        gc.collect(0)


if __name__ == "__main__":
    sys.exit(main())
