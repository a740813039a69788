"""What finding the retainers of a dump's top sites costs the target: the walk's wall
time, its CPU in the agent, its longest single slice (a GIL hold) and the longest pause
the target itself saw, on a heap of N small objects.

    .venv/bin/python benchmarks/retainers_cost.py [--objects 1000000] [--python 3.12]

``benchmarks/targets/retainer_heap.py`` builds N objects, then leaks ~1 KiB objects from
``Sink.keep`` while heapspy is attached (a session in this process, 64 KiB sampling, or
``--rate``). After
3 s of sampling the target's latency probe is reset and ``Session.find_retainers`` runs:
the same walk as a census (same roots, 10 ms slices, 30 ms rests) that also notes who
holds each sampled live object of the top sites. Prints the figures as JSON, and checks
that the leak's holder is ``__main__.SINK``. Run niced on a shared machine; note the load.
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

from heapspy.config import AttachConfig  # noqa: E402
from heapspy.session import Session  # noqa: E402
from heapspy.units import parse_size  # noqa: E402

TARGET = ROOT / "benchmarks" / "targets" / "retainer_heap.py"


def _line(proc: subprocess.Popen[str], sig: int) -> str:
    proc.send_signal(sig)
    assert proc.stdout is not None
    return proc.stdout.readline().strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--python", default="3.12")
    parser.add_argument("--rate", default="64KiB", help="sampling rate (more: more to find)")
    args = parser.parse_args()
    interp = pick_interpreters([args.python])[0]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen(
        [*interp.argv, str(TARGET), str(args.objects)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("READY")
        config = AttachConfig(rate=parse_size(args.rate), final_dump=False, retainers=True)
        session = Session.attach(proc.pid, config)
        try:
            session.run(3.0)
            assert _line(proc, signal.SIGUSR2) == "RESET"
            time.sleep(1.0)
            idle_pause = float(_line(proc, signal.SIGUSR1).split()[1])
            assert _line(proc, signal.SIGUSR2) == "RESET"
            t0 = time.monotonic()
            found = session.find_retainers()
            wall = time.monotonic() - t0
            pause = float(_line(proc, signal.SIGUSR1).split()[1])
        finally:
            session.detach()
    finally:
        proc.kill()
        proc.wait()
    assert found is not None, "no retainers"
    sink = next(s for s in found.sites if s.site.function.endswith("keep"))
    figures = {
        "python": interp.label,
        "walker": found.walker,
        "objects": found.objects,
        "wall_s": round(wall, 2),
        "agent_elapsed_s": round(found.elapsed, 2),
        "agent_cpu_s": round(found.cpu, 2),
        "longest_slice_ms": round(found.longest_slice * 1000, 1),
        "setup_ms": round(found.setup * 1000, 1),
        "longest_pause_ms": pause,
        "idle_longest_pause_ms": idle_pause,
        "sites": len(found.sites),
        "sink_samples": sum(h.samples for h in sink.holders),
        "sink_holder": list(sink.holders[0].path),
        "sink_share": round(sink.holders[0].share, 3),
        "load": os.getloadavg()[0],
    }
    log(
        f"{interp.label} ({found.walker} walk): {found.objects:,} objects, {len(found.sites)} "
        f"sites: {wall:.1f} s wall ({found.cpu:.2f} s CPU in the agent), longest slice "
        f"{found.longest_slice * 1000:.1f} ms CPU (setup {found.setup * 1000:.1f} ms), "
        f"longest pause seen by the target "
        f"{pause:.1f} ms (idle: {idle_pause:.1f} ms); Sink.keep held by "
        f"{sink.holders[0].describe()} {sink.holders[0].share:.0%}"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
