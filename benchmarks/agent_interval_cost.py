"""CPU the agent spends inside the target per interval, with ~10k live sampled blocks.

The target retains enough memory that about 10,000 sampled blocks are live at the chosen
rate, and keeps churning temporaries. heapspy attaches (sampled mode, 1 s interval),
streams for a while, and this script reads the agent thread's own CPU time from
/proc/PID/task/TID/stat (the thread that appeared with the attach), then prints CPU per
interval and as a share of one core. Also prints the same for exact mode (tracemalloc),
whose per-interval snapshot is proportional to the heap instead.
Run: .venv/bin/python benchmarks/agent_interval_cost.py [python] [seconds]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from heapspy.config import AttachConfig
from heapspy.session import Session

TARGET = textwrap.dedent(
    """
    import os, sys, threading, time
    rate = int(sys.argv[1])
    print("READY", os.getpid(), flush=True)
    while threading.active_count() == 1:  # wait for the agent: only later allocations count
        time.sleep(0.01)
    keep = []
    def retain(n):
        keep.extend(bytearray(1024) for _ in range(n))
    for i in range(10_000 * rate // 1024 // 1000):  # ~10k live samples
        retain(1000)
    while True:
        tmp = [str(i) * 3 for i in range(2000)]
        time.sleep(0.001)
    """
)


def _threads(pid: int) -> set[int]:
    return {int(t) for t in os.listdir(f"/proc/{pid}/task")}


def _cpu(pid: int, tid: int) -> float:
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(python: str, rate: int, seconds: float) -> None:
    script = Path(tempfile.mkdtemp()) / "target.py"
    script.write_text(TARGET)
    proc = subprocess.Popen(
        [python, str(script), str(max(rate, 4096))], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        before = _threads(proc.pid)
        config = AttachConfig(rate=rate, final_dump=False, dump_dir=script.parent)
        session = Session.attach(proc.pid, config)
        try:
            (agent,) = _threads(proc.pid) - before
            session.run(duration=3.0)  # the retained set is built meanwhile
            cpu0 = _cpu(proc.pid, agent)
            n0 = session.aggregator.intervals
            session.run(duration=seconds)
            cpu1 = _cpu(proc.pid, agent)
            totals = session.aggregator.totals
            heap = session.aggregator.heap_estimate()
            intervals = session.aggregator.intervals - n0
        finally:
            session.detach()
        live = totals.get("live_samples", "n/a")
        per = (cpu1 - cpu0) / max(1, intervals)
        mode = session.aggregator.sampling.mode
        print(
            f"{mode:>8} rate={rate:<7} live samples={live!s:>6} heap~{heap / 2**20:.0f} MiB "
            f"intervals={intervals:>3} "
            f"agent CPU/interval={per * 1000:7.2f} ms ({per * 100:.2f} % of a core)"
        )
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    python = sys.argv[1] if len(sys.argv) > 1 else "/root/.pyenv/versions/3.11.7/bin/python3.11"
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2][0].isdigit() else 10
    os.environ.setdefault("HEAPSPY_RUNTIME_DIR", tempfile.mkdtemp(prefix="heapspy-bench-"))
    measure(python, 4096, seconds)
    if "--exact" in sys.argv:
        measure(python, 1, seconds)


if __name__ == "__main__":
    main()
    time.sleep(0)
