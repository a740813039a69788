"""What reading the asyncio task's name at each sample costs (issue 15).

    .venv/bin/python benchmarks/task_label_cost.py [--interpreters 3.12,3.14]
        [--allocations 20000] [--rounds 15]

Why: the task label is read at sample time, by following five pointers from asyncio's
``Handle._run`` frame to the C Task's name (heapspy_agent.labels.task_probe), so that a
task that ends before the next interval keeps its name. Nothing of it runs on an
allocation that is not sampled, so ``shim_overhead.py`` at the default rate cannot see
it; this measures it where it is largest: every allocation sampled (32 KiB blocks at a
rate of 256 bytes), inside one asyncio task, with the probe off and on in alternate
rounds of one process per interpreter (benchmarks/targets/task_label_loop.py). Printed:
the median microseconds of process time per sampled allocation (the block's zeroing,
the stack capture and the interning included) and the difference. Not a timed test.

Figures from this machine (defaults, load ~30 on 2 cores, two runs): 3.12 1.91 us off,
1.95 on (+0.04; another run +0.09); 3.14 1.36 and 1.35 (-0.01; another +0.04): within a
loaded machine's noise, at most ~0.1 us per sample; at the default 512 KiB rate (one
sample per 512 KiB allocated) nothing measurable.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess

from harness import ROOT, log, pick_interpreters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interpreters", default="3.12,3.14")
    parser.add_argument("--allocations", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT / "agent"),
        HEAPSPY_SHIM=str(ROOT / "agent" / "heapspy_agent" / "_heapspy_shim.so"),
    )
    script = ROOT / "benchmarks" / "targets" / "task_label_loop.py"
    for interp in pick_interpreters(args.interpreters.split(",")):
        log(f"{interp.label}: {args.rounds} rounds of {args.allocations} sampled allocations")
        proc = subprocess.run(
            interp.command(str(script), str(args.allocations), str(args.rounds)),
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        off, on = statistics.median(result["off"]), statistics.median(result["on"])
        print(f"{interp.label}: {off:.2f} us per sampled allocation with the probe off, "
              f"{on:.2f} on ({on - off:+.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
