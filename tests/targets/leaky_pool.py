"""A thread leak and a task leak, for heapspy's thread and task rules.

Usage: leaky_pool.py [--hog]

Prints "READY <pid>". Once heapspy's agent has sent its first samples, it serves LEAKS "requests"
the wrong way: each starts a thread that is never joined (it blocks forever in
``handle``), and two asyncio tasks that never finish (``consume`` awaits an empty
queue's get(), ``wait_for`` a future nobody sets). Then it idles.

--hog: the LEAKS threads only, started at once; then, as soon as the agent has sent its
first samples, the main thread holds the GIL: with a switch interval of 1000 s it spins
in Python for 30 s at a time. A profile hook in the agent's thread (the target's own,
as any target may set) holds the agent right after that send until the main thread
spins, so whatever heapspy asks in answer to those samples waits 30 s (heapspy then
reads the threads with py-spy), however slow the machine.
"""

import asyncio
import os
import sys
import threading
import time

LEAKS = 60
EVERY = 0.02
forever = threading.Event()


def agent():
    """heapspy's agent, once it runs here (None before)."""
    return getattr(sys.modules.get("heapspy_agent.agent"), "_active", None)


def agent_collections():
    """How many collections heapspy's agent has started (0 before it runs)."""
    return getattr(agent(), "seq", 0)


def agent_started():
    """Whether heapspy's agent has sent its first samples: the count before the leak
    (the growth rules' baseline) has been seen."""
    return agent_collections() >= 2


def handle(n):
    forever.wait()  # LEAK: thread


async def consume(queue):
    await queue.get()  # LEAK: consume


async def wait_for(future):
    await future  # LEAK: wait_for


async def produce(ready):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()
    never = loop.create_future()
    ready.set()
    while not agent_started():
        await asyncio.sleep(0.01)
    for n in range(LEAKS):
        threading.Thread(target=handle, args=(n,), name="request-%d" % n, daemon=True).start()
        loop.create_task(consume(queue), name="consumer-%d" % n)
        loop.create_task(wait_for(never), name="waiter-%d" % n)
        await asyncio.sleep(EVERY)
    await never


def spin():
    end = time.monotonic() + 30.0
    while time.monotonic() < end:
        pass


def hog():
    go, hogging = threading.Event(), threading.Event()

    def after_first_samples(frame, event, arg):
        # in the agent's thread: once its first SAMPLES frame (kind 3) is sent, wait
        # until the main thread holds the GIL for good
        if event == "return" and frame.f_code.co_name == "_send" and not go.is_set():
            if frame.f_locals.get("kind") == 3:
                go.set()
                hogging.wait()

    threading.setprofile(after_first_samples)
    print("READY", os.getpid(), flush=True)
    while not go.wait(0.01):  # timed: a pending call (heapspy's attach) runs meanwhile
        pass
    sys.setswitchinterval(1000.0)
    hogging.set()
    while True:
        spin()  # HOG
        time.sleep(0)


def main():
    if sys.argv[1:] == ["--hog"]:
        for n in range(LEAKS):
            threading.Thread(target=handle, args=(n,), name="request-%d" % n, daemon=True).start()
        hog()
    ready = threading.Event()
    threading.Thread(
        target=lambda: asyncio.run(produce(ready)), name="event-loop", daemon=True
    ).start()
    ready.wait()
    print("READY", os.getpid(), flush=True)
    while True:
        time.sleep(0.01)


if __name__ == "__main__":
    sys.exit(main())
