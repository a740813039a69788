"""Task names read at sample time, and the room default names get (issue 15).

An event loop runs FLOOD one-step tasks left with asyncio's default name, each making one
256 KiB block (sampled for certain at 16 KiB), then one task named "after-flood" that
does the same: the default names must stop at half of HS_MAX_NAMED (8192) label sets,
and the named task must still be labelled by the name object it had at the sample.
"""

import asyncio

from heapspy_agent.labels import LabelNamer, task_name

from _common import emit, load

FLOOD = 4200
HALF_NAMED = 4096  # HS_MAX_NAMED / 2


async def one_step() -> None:
    block = bytearray(256 * 1024)
    del block


async def main() -> None:
    loop = asyncio.get_running_loop()
    for _ in range(FLOOD):
        await loop.create_task(one_step())
    await loop.create_task(one_step(), name="after-flood")


shim = load()
shim.start(16 * 1024, seed=5)
namer = LabelNamer(shim)
asyncio.run(asyncio.sleep(0))  # asyncio imported and its classes set up
namer.refresh()  # anchors and the task probe
asyncio.run(main())
drain = shim.drain()
names = [task_name(ls.name) for ls in drain.new_labels if ls.name is not None]
assert shim.stop()
emit(
    {
        "probe": namer._probe is not None,
        "default": sum(1 for n in names if n.startswith("Task-")),
        "named": sorted(n for n in names if not n.startswith("Task-")),
        "half": HALF_NAMED,
    }
)
