"""One asyncio task that allocates 300 MiB in one go, among tasks that allocate little,
for heapspy's per-task limits (task-alloc>200MiB).

Usage: bulk_task.py [--eager]
Prints "READY <pid>". Once heapspy's agent has sent its first samples, it starts the
task "bulk-import" and, beside it, "poller-0".."poller-3", which allocate a few KiB at a
time. bulk-import waits until the agent has collected twice more (so that heapspy knows
the task by name: its samples carry its label), then allocates 300 MiB at once, keeps it
and prints "ALLOCATED"; after four more collections it prints "SEEN" (heapspy has had
as many chances to fire the rule again). Beside them, "prelude" allocates 8 MiB (line
marked EAGER) in its one step, kept. With --eager (3.12+), the tasks are created by
asyncio's eager task factory: each first step runs inside create_task.
"""

import asyncio
import os
import sys

MiB = 1024 * 1024


def collections():
    """How many collections heapspy's agent has started (0 before it runs)."""
    agent = getattr(sys.modules.get("heapspy_agent.agent"), "_active", None)
    return getattr(agent, "seq", 0)


async def until(seq):
    while collections() < seq:
        await asyncio.sleep(0.01)


async def bulk_import(keep):
    await until(collections() + 2)
    keep.append(bytearray(300 * MiB))  # BULK
    print("ALLOCATED", flush=True)
    await until(collections() + 4)
    print("SEEN", flush=True)
    await asyncio.sleep(3600)


async def prelude(keep):
    keep.append(bytearray(8 * MiB))  # EAGER


async def poll(keep):
    while True:
        keep.append(b"x" * 4000)
        del keep[:-100]
        await asyncio.sleep(0.01)


async def main():
    print("READY", os.getpid(), flush=True)
    await until(2)
    keep = []
    loop = asyncio.get_running_loop()
    if "--eager" in sys.argv:
        loop.set_task_factory(asyncio.eager_task_factory)
    tasks = [loop.create_task(prelude(keep), name="prelude")]
    tasks.append(loop.create_task(bulk_import(keep), name="bulk-import"))
    tasks += [loop.create_task(poll([]), name="poller-%d" % i) for i in range(4)]
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main())
