"""A service whose memory belongs to known threads and asyncio tasks (labels, issue 15).

Usage: labelled_service.py
Prints "READY <pid>". Threads "clean-handler-0" and "-1" free what they allocate at once;
threads "leaky-handler-0" and "-1" do too until heapspy's agent is loaded in this process,
then keep ~8 MB/s each (up to 24 MB). The main thread runs an event loop: tasks named
"churner" (coroutine ``churn``) drop what they make; once the agent is loaded, four tasks
named "hoarder" (coroutine ``hoard``) each keep ~1 MB of results in HOARD, over ~1 s
(several agent intervals at the tests' 0.2 s), and end: then "HOARDED" is printed.
Everything goes on until the process is killed.
"""

import asyncio
import os
import sys
import threading
import time

KEPT = []
HOARD = []
THREAD_CAP = 24 * 1000 * 1000  # bytes each leaky handler keeps at most


def leaky_handler() -> None:
    kept = 0
    while True:
        block = [bytes(1000) for _ in range(40)]
        if kept < THREAD_CAP and "heapspy_agent" in sys.modules:
            KEPT.append(block)
            kept += 40 * 1000
        del block
        time.sleep(0.005)


def clean_handler() -> None:
    while True:
        scratch = [bytes(1000) for _ in range(20)]
        del scratch
        time.sleep(0.005)


async def hoard(rounds: int) -> None:
    for _ in range(rounds):
        HOARD.append([bytes(1000) for _ in range(100)])
        await asyncio.sleep(0.1)


async def churn() -> None:
    for _ in range(10):
        scratch = [bytes(2000) for _ in range(50)]
        del scratch
        await asyncio.sleep(0.02)


async def main() -> None:
    for kind, target in (("leaky", leaky_handler), ("clean", clean_handler)):
        for i in range(2):
            threading.Thread(target=target, name="%s-handler-%d" % (kind, i), daemon=True).start()
    loop = asyncio.get_running_loop()
    print("READY", os.getpid(), flush=True)
    hoarders = None
    announced = False
    while True:
        loop.create_task(churn(), name="churner")
        if hoarders is None and "heapspy_agent" in sys.modules:
            hoarders = [loop.create_task(hoard(10), name="hoarder") for _ in range(4)]
        if hoarders and not announced and all(t.done() for t in hoarders):
            print("HOARDED", flush=True)
            announced = True
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main())
