"""The loop task_label_cost.py times: one asyncio task making N blocks, each sampled for
certain, with the shim's sample-time task name probe on or off (Python 3.8 syntax).

Usage: task_label_loop.py N ROUNDS   (PYTHONPATH=<repo>/agent, HEAPSPY_SHIM=<library>)
Prints one JSON line: microseconds of process time per sampled allocation, per round,
for "off" and "on" (alternating, off first).
"""

import asyncio
import json
import os
import sys
import time

from heapspy_agent.labels import LabelNamer
from heapspy_agent.shim import Shim

BLOCK = 32 * 1024  # sampled for certain at a rate of 256 bytes


async def allocate(n):
    for _ in range(n):
        block = bytearray(BLOCK)
        del block


def one_round(n, probe):
    shim = Shim.load(os.environ["HEAPSPY_SHIM"])
    shim.start(256, seed=3)
    namer = LabelNamer(shim)
    namer.refresh()  # anchors and the task probe
    if not probe:
        shim.set_task_probe((-1, 0, 16, 16, -1), None, None)  # NULL types: off
    started = time.process_time()
    asyncio.run(allocate(n))
    spent = time.process_time() - started
    named = [ls.name for ls in shim.drain().new_labels if ls.name is not None]
    assert bool(named) == probe, named  # the probe read the task's name, or was off
    assert shim.stop()
    return spent / n * 1e6


def main():
    n, rounds = int(sys.argv[1]), int(sys.argv[2])
    asyncio.run(asyncio.sleep(0))  # asyncio's classes set up before the first round
    out = {"off": [], "on": []}
    for _ in range(rounds):
        out["off"].append(one_round(n, False))
        out["on"].append(one_round(n, True))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
