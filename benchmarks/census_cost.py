"""What a heap census costs the target: wall time, the target's CPU, its longest pause
and the walk's bookkeeping memory, for a heap of N small objects.

    .venv/bin/python benchmarks/census_cost.py [--objects 1000000] [--python 3.12]
        [--slice 10ms] [--pause 30ms]

On a shared machine run it niced (``nice -n -15``): the probe then measures the walk
rather than the other processes' turn on the CPU.

``tests/targets/census_target.py`` builds ``census_app.CACHE``, a dict of N/4 small
dicts (each entry: a dict, a str, two ints: about four objects), plus its other roots.
heapspy attaches (a session in this process), the target's latency probe (a thread that
sleeps 1 ms in a loop and records how late it wakes) is reset, and the census runs
through the session. Reported:

- wall time of the census, and the agent's own account (elapsed, CPU, longest slice);
- the target's CPU during the census, less what it spends idle over as long (its probe
  thread), as a share of one core;
- the target's longest pause as its probe saw it (GIL held by the walk, plus the
  machine's own scheduling delays: compare with the idle figure printed first);
- bookkeeping: the walk's own memory (its count: the visited bitmap, and for the native
  walk its paths table and stack too), and the target's peak RSS
  over the census (``VmHWM`` after ``clear_refs``) above its RSS before.

Goals (issue 17): 10 M objects in <= 10 s at <= 25 % of a core, longest pause <= 20 ms,
bookkeeping <= 2 % of the heap and <= 64 MiB. Prints figures; not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import log, pick_interpreters  # noqa: E402

from heapspy.census import CensusOptions, take_census  # noqa: E402
from heapspy.config import AttachConfig  # noqa: E402
from heapspy.session import Session  # noqa: E402
from heapspy.units import format_bytes, parse_duration  # noqa: E402

TARGET = ROOT / "tests" / "targets" / "census_target.py"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def latency(proc: subprocess.Popen[str]) -> float:
    proc.send_signal(signal.SIGUSR1)
    assert proc.stdout is not None
    words = proc.stdout.readline().split()
    proc.stdout.readline()  # CALLS
    return float(words[1])


def reset(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGUSR2)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "RESET"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--python", default="3.12")
    parser.add_argument("--slice", default="10ms")
    parser.add_argument("--pause", default="30ms")
    args = parser.parse_args()
    interp = pick_interpreters([args.python])[0]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen(
        [*interp.argv, str(TARGET), str(max(1, args.objects // 4))],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("READY")
        assert proc.stdout.readline().startswith("TRUTH")
        pid = proc.pid
        session = Session.attach(pid, AttachConfig(final_dump=False))
        try:
            idle_cpu = cpu_seconds(pid)
            reset(proc)
            time.sleep(3.0)
            idle_rate = (cpu_seconds(pid) - idle_cpu) / 3.0
            idle_pause = latency(proc)
            rss = status_kib(pid, "VmRSS")
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
            reset(proc)
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            opts = CensusOptions(
                slice=parse_duration(args.slice, "--slice"),
                pause=parse_duration(args.pause, "--pause"),
            )
            with_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "heapspy-census-bench"
            result, path = take_census(session, opts, with_dir)
            wall = time.monotonic() - t0
            cpu = cpu_seconds(pid) - cpu0 - idle_rate * wall
            pause = latency(proc)
            peak = status_kib(pid, "VmHWM")
        finally:
            session.detach()
    finally:
        proc.kill()
        proc.wait()
    p = result.progress
    figures = {
        "python": interp.label,
        "walker": p.walker,
        "objects": p.objects,
        "heap": p.bytes,
        "wall_s": round(wall, 2),
        "agent_elapsed_s": round(p.elapsed, 2),
        "agent_cpu_s": round(p.cpu, 2),
        "target_cpu_share": round(cpu / wall, 3),
        "longest_slice_ms": round(p.longest_slice * 1000, 1),
        "longest_slice_wall_ms": round(p.longest_slice_wall * 1000, 1),
        "longest_pause_ms": pause,
        "idle_longest_pause_ms": idle_pause,
        "bookkeeping_bytes": p.bookkeeping,
        "peak_rss_growth": (peak - rss) * 1024,
        "dump": str(path),
    }
    log(
        f"{interp.label} ({p.walker} walk): {p.objects:,} objects, {format_bytes(p.bytes)}: "
        f"{wall:.1f} s wall, "
        f"target CPU {cpu / wall:.0%} of a core ({p.cpu:.1f} s in the agent), longest slice "
        f"{p.longest_slice * 1000:.1f} ms CPU ({p.longest_slice_wall * 1000:.0f} ms wall), "
        f"longest pause seen by the target {pause:.1f} ms (idle: {idle_pause:.1f} ms), "
        f"bookkeeping {format_bytes(p.bookkeeping)} ({p.bookkeeping / max(p.bytes, 1):.2%} of the "
        f"heap), peak RSS +{format_bytes((peak - rss) * 1024)}"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
