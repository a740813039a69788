"""How long a PEP 768 request takes to start running, by what the target's threads do.

Run: ``python benchmarks/attach_latency_pep768.py [--runs N]`` (needs the CPython 3.14
from ``make provision``). For each scenario a fresh 3.14 target is started and N requests
are made one after another; the injected script records ``time.monotonic()`` (the clock
is system-wide, so both processes read the same one) as its first statement. Latency is
from the moment the request is fully written (path, pending flag, eval-breaker bit) to
that first statement; "request_exec" is the time heapspy spends finding ``_PyRuntime``,
reading the offsets and writing (ELF facts cached).

Scenarios: one busy thread; two threads spinning (GIL contention), aimed at the main
thread; main thread in a 10 ms sleep loop; main thread blocked in ``time.sleep(5)`` with
a second thread running Python, aimed at that thread (``--thread``); and the same
blocked main thread aimed at the main thread (runs only when the sleep returns).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from interpreters import py314_problem, py314_wrapper  # noqa: E402

from heapspy.inject.pep768 import request_exec  # noqa: E402
from heapspy.target.process import inspect_target  # noqa: E402

TARGET = r"""
import json, sys, threading, time

def spin():
    while True:
        total = 0
        for i in range(200):
            total += i

mode = sys.argv[1]
info = {}
if mode in ("contended", "blocked"):
    t = threading.Thread(target=spin, daemon=True)
    t.start()
    while t.native_id is None:
        time.sleep(0.001)
    info["worker"] = t.native_id
print(json.dumps(info), flush=True)
if mode == "sleep10ms":
    while True:
        time.sleep(0.01)
elif mode == "blocked":
    while True:
        time.sleep(5)
else:
    spin()
"""

SCRIPT = """
import time as _time
_t = _time.monotonic()
with open({marker!r}, "a") as _f:
    _f.write(repr(_t) + "\\n")
"""

SCENARIOS = [
    ("busy, 1 thread, main", "busy", False),
    ("busy, 2 threads contending, main", "contended", False),
    ("main in 10 ms sleep loop, main", "sleep10ms", False),
    ("main blocked in sleep(5), --thread worker", "blocked", True),
]


def measure(mode: str, use_worker: bool, runs: int, tmp: Path) -> tuple[list[float], list[float]]:
    target_py = tmp / "target.py"
    target_py.write_text(TARGET)
    marker = tmp / f"marker-{mode}-{use_worker}"
    script = tmp / f"script-{mode}-{use_worker}.py"
    script.write_text(SCRIPT.format(marker=str(marker)))
    proc = subprocess.Popen(
        [str(py314_wrapper()), str(target_py), mode], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        time.sleep(0.3)  # let the main thread reach its steady state
        target = inspect_target(proc.pid)
        thread_id = info["worker"] if use_worker else None
        latencies, costs = [], []
        for i in range(runs):
            t0 = time.perf_counter()
            req = request_exec(target, str(script), thread_id=thread_id)
            costs.append(time.perf_counter() - t0)
            deadline = time.monotonic() + 10
            while True:
                lines = marker.read_text().split() if marker.exists() else []
                if len(lines) > i:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{mode}: request {i} did not run in 10 s")
                time.sleep(0.0002)
            latencies.append(float(lines[i]) - req.written_at)
            time.sleep(0.005)
        return latencies, costs
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def blocked_main(tmp: Path) -> float:
    """Aim at a main thread in time.sleep(5): how long until the request is taken."""
    target_py = tmp / "target.py"
    script = tmp / "script-blocked-main.py"
    script.write_text(SCRIPT.format(marker=str(tmp / "marker-blocked-main")))
    proc = subprocess.Popen(
        [str(py314_wrapper()), str(target_py), "blocked"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(0.3)
        req = request_exec(inspect_target(proc.pid), str(script))
        started = time.monotonic()
        req.wait_taken(timeout=10)
        return time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def ms(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[int(0.9 * (len(values) - 1))]
    return (
        f"median {statistics.median(values) * 1e3:7.2f} ms  p90 {p90 * 1e3:7.2f} ms  "
        f"max {values[-1] * 1e3:7.2f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    problem = py314_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="heapspy-bench-") as d:
        tmp = Path(d)
        print(f"PEP 768 latency, write -> script start, {args.runs} requests each")
        all_costs: list[float] = []
        for label, mode, use_worker in SCENARIOS:
            latencies, costs = measure(mode, use_worker, args.runs, tmp)
            all_costs += costs
            print(f"  {label:44s} {ms(latencies)}")
        waited = blocked_main(tmp)
        print(f"  {'main blocked in sleep(5), main':44s} taken after {waited:.2f} s")
        print(f"  {'request_exec itself (cached ELF facts)':44s} {ms(all_costs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
