"""A service whose memory belongs to known threads and asyncio tasks (labels, issue 15).

Usage: labelled_service.py
Prints "READY <pid>". Threads "clean-handler-0" and "-1" free what they allocate at once,
and so do "leaky-handler-0" and "-1" until SIGUSR1; from then on these keep ~8 MB/s each
(up to 24 MB). The main thread runs an event loop: tasks named "churner" (coroutine
``churn``) drop what they make. SIGUSR1 also starts four tasks named "hoarder" (coroutine
``hoard``) that keep ~20 KB each in HOARD every 0.1 s until SIGUSR2; when they have all
ended, "HOARDED" is printed. From SIGUSR1 on, every loop turn also starts a task named
"sprinter" and one left with asyncio's default name (``Task-<n>``), both coroutine
``sprint``: each allocates and drops ~100 KB in its one step and ends, never alive
across an await (shorter than any interval). So does, each turn, a task named
"subsprinter" (coroutine ``sub_sprint``), made by a task factory (set for that one
create_task: 3.13.0 names a factory's task "None" when given no name) as a Python
subclass of asyncio.Task whose ``get_name()`` says "overridden", and a task named
"waiter" (coroutine ``wait_then_alloc``) that awaits a future set by the next loop turn
(a real await: its second step is run by its wakeup callback), then allocates ~100 KB
and ends. Everything goes on until the process is killed.
"""

import asyncio
import os
import signal
import threading
import time
from typing import Any

KEPT = []
HOARD = []
THREAD_CAP = 24 * 1000 * 1000  # bytes each leaky handler keeps at most
LEAK = threading.Event()


def leaky_handler() -> None:
    kept = 0
    while True:
        block = [bytes(1000) for _ in range(40)]
        if kept < THREAD_CAP and LEAK.is_set():
            KEPT.append(block)
            kept += 40 * 1000
        del block
        time.sleep(0.005)


def clean_handler() -> None:
    while True:
        scratch = [bytes(1000) for _ in range(20)]
        del scratch
        time.sleep(0.005)


async def hoard(stop: asyncio.Event) -> None:
    while not stop.is_set():
        HOARD.append([bytes(1000) for _ in range(20)])
        await asyncio.sleep(0.1)


async def churn() -> None:
    for _ in range(10):
        scratch = [bytes(2000) for _ in range(50)]
        del scratch
        await asyncio.sleep(0.02)


async def sprint() -> None:
    scratch = [bytes(2000) for _ in range(50)]
    del scratch


async def sub_sprint() -> None:
    scratch = [bytes(2000) for _ in range(50)]
    del scratch


async def wait_then_alloc() -> None:
    loop = asyncio.get_running_loop()
    woken = loop.create_future()
    loop.call_soon(woken.set_result, None)
    await woken
    scratch = [bytes(2000) for _ in range(50)]
    del scratch


class SubTask(asyncio.Task):  # type: ignore[type-arg]
    def get_name(self) -> str:
        return "overridden"


def task_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
    """A SubTask; keyword arguments: what create_task passes on (context, 3.11+)."""
    return SubTask(coro, loop=loop, **kwargs)


async def main() -> None:
    asyncio.current_task().set_name("main")  # the only default names: sprint's tasks
    for kind, target in (("leaky", leaky_handler), ("clean", clean_handler)):
        for i in range(2):
            threading.Thread(target=target, name="%s-handler-%d" % (kind, i), daemon=True).start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hoarders = []

    def start() -> None:
        LEAK.set()
        hoarders.extend(loop.create_task(hoard(stop), name="hoarder") for _ in range(4))

    loop.add_signal_handler(signal.SIGUSR1, start)
    loop.add_signal_handler(signal.SIGUSR2, stop.set)
    print("READY", os.getpid(), flush=True)
    announced = False
    while True:
        loop.create_task(churn(), name="churner")
        if LEAK.is_set():
            loop.create_task(sprint(), name="sprinter")
            loop.create_task(sprint())
            loop.create_task(wait_then_alloc(), name="waiter")
            loop.set_task_factory(task_factory)
            loop.create_task(sub_sprint(), name="subsprinter")
            loop.set_task_factory(None)
        if hoarders and not announced and all(t.done() for t in hoarders):
            print("HOARDED", flush=True)
            announced = True
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main())
