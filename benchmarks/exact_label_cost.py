"""What exact mode's label samples cost: the shim sampling beside tracemalloc (issue 15).

    .venv/bin/python benchmarks/exact_label_cost.py [--interpreter 3.11-debian-static]
        [--rates 0,65536,524288] [--allocations 30000]

Why: in exact mode the shim sits on top of tracemalloc to count totals; to label exact
bytes by thread and task it also samples (heapspy_agent.exact.LABEL_RATE). Timing a
loaded 2-core machine cannot see a fraction of a percent, so this counts instructions
under cachegrind: an allocation-heavy loop in exact mode, collected after each round
(benchmarks/targets/exact_label_loop.py), at each label rate (0: totals only, as before
the labels), for two loop lengths; the difference between the two lengths is the loop's
own cost, without start-up. Printed: instructions per rate and the increase over rate 0.

Figures from this machine (Debian's 3.11, 30,000 and 90,000 allocations x 3 rounds, two
runs): 64 KiB +0.27 % and -0.56 % over rate 0, 512 KiB +0.10 % and -0.25 %: the
difference is within what runs of one configuration differ by (hash seeds, collection
timing), i.e. nothing measurable. What the label rate does change is the agent's CPU per
collection (it drains the samples): see heapspy_agent.exact.LABEL_RATE. Not a timed test.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

from harness import ROOT, log, pick_interpreters
from interpreters import Interpreter


def instructions(interp: Interpreter, rate: int, allocations: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no",
             f"--cachegrind-out-file={Path(tmp) / 'cg.out'}",
             *interp.command(str(ROOT / "benchmarks" / "targets" / "exact_label_loop.py"),
                             str(ROOT / "agent"), str(rate), str(allocations))],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    assert found, out.stderr
    return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interpreter", default="3.11-debian-static")
    parser.add_argument("--rates", default="0,65536,524288")
    parser.add_argument("--allocations", type=int, default=30000)
    args = parser.parse_args()
    (interp,) = pick_interpreters([args.interpreter])
    rates = [int(r) for r in args.rates.split(",")]
    cost = {}
    for rate in rates:
        short = instructions(interp, rate, args.allocations)
        long = instructions(interp, rate, 3 * args.allocations)
        cost[rate] = long - short
        log(f"label rate {rate}: {cost[rate] / 1e9:.3f} G instructions")
    base = cost[rates[0]]
    for rate in rates[1:]:
        print(f"label rate {rate}: {100 * (cost[rate] - base) / base:+.2f} % over rate {rates[0]}")


if __name__ == "__main__":
    main()
