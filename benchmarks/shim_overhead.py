"""What the sampling shim costs, measured so that this machine's speed swings cancel out.

    .venv/bin/python benchmarks/shim_overhead.py [--interpreters 3.11,3.14]
        [--rates 0,64KiB,512KiB] [--rounds 20] [--block 0.04] [--workloads go,chaos]
        [--frames 64] [--warm 0.5] [--forward] [--base OTHER.so] [--clock cpu]
        [--json results.json]

Why a second overhead benchmark: on this 2-vCPU KVM guest a pure-Python spin loop runs
at 0.73x-1.18x of its mean speed in regimes lasting seconds (host contention), so
``benchmarks/overhead.py``, whose attached and unattached phases are 5 s apart, shows
swings of +-25 % in its own no-profiler control column. Here the comparison is paired at
a much finer grain, inside one process per interpreter: for each of the same eleven
pyperformance workloads (loaded by ``overhead_driver.py``), a block of N calls (about
``--block`` seconds) runs with the shim's hooks off, then on, on, off (ABBA, which also
cancels a linear drift; BAAB in every other round, because the first block after another
workload runs colder: ABBA alone showed a +0.5-1 % bias in the no-hook column), for each
rate, in every round. A block's hooks-on start and
stop are outside its timing, as the agent does them once per session; the agent's
interval drain is measured apart (``agent_interval_cost.py``, ~1-2 ms a second).

``--warm F`` runs F of each block untimed first, with the hooks as in the block: a
shim started afresh for a block interns every stack it samples, which a long session
does once, so without it short blocks overstate sampling's steady-state cost (measured
per sample in steady state: 0.3-1.4 us, or 0.6-4 us when the frames are fresh objects
to make on 3.11+, at depths 5-60).

``--base OTHER.so`` adds a column per rate for another build of the shim (its file
name must differ from the built one's), measured in the same rounds of the same process:
the way to compare a change to the hooks on this noisy machine (``base`` columns).

The ``none`` column runs the same pairs with the hooks off in both halves: the method's
own noise. The ratio printed is time(off) / time(on) for the same calls, i.e. throughput
on / off; per workload the geometric mean over rounds, then the geometric mean over
workloads with a 95 % interval from the spread of the per-round geometric means.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NONE = "none"
FORWARD = "forward"  # the shim built with -DHS_FORWARD_ONLY: what any hook costs


def column(rate: int) -> str:
    return f"{rate // 1024} KiB" if rate >= 1024 and rate % 1024 == 0 else str(rate)


# --- inside the measured interpreter (Python 3.8+, run with --child) -----------------


def _calls_for(body: Callable[[], object], seconds: float) -> int:
    """How many calls make a block of about `seconds` (at least one)."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds / 2:
        body()
        n += 1
    return max(1, round(n * seconds / (time.perf_counter() - t0)))


def _block(body: Callable[[], object], n: int, clock: Callable[[], float]) -> float:
    t0 = clock()
    for _ in range(n):
        body()
    return clock() - t0


def child(args: argparse.Namespace) -> int:
    sys.path[:0] = [str(ROOT / "agent"), str(HERE)]
    import overhead_driver  # noqa: PLC0415 - only inside the measured interpreter
    from heapspy_agent.shim import Shim  # noqa: PLC0415

    names = [n for n in args.workloads.split(",") if n]
    bodies = overhead_driver.prepare(args.bench_dir, names)
    shim = Shim.load(args.shim or None)
    # (column, library, rate): "none" keeps the hooks off in both halves
    arms: list[tuple[str, Any, int]] = [(NONE, None, 0)]
    arms += [(column(int(r)), shim, int(r)) for r in args.rates.split(",")]  # bytes
    if args.base:
        base = Shim.load(args.base)
        arms += [(column(int(r)) + " base", base, int(r)) for r in args.rates.split(",")]
    if args.forward_shim:
        arms.append((FORWARD, Shim.load(args.forward_shim), 0))
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    calls = {name: _calls_for(body, args.block) for name, body in bodies.items()}
    warm = {name: math.ceil(n * args.warm) if args.warm > 0 else 0 for name, n in calls.items()}
    ratios: dict[str, dict[str, list[float]]] = {arm[0]: {} for arm in arms}
    samples: dict[str, int] = {}
    for rnd in range(args.rounds):
        # ABBA in even rounds, BAAB in odd ones: a block that comes first after another
        # workload runs colder, and the alternation gives that to off and on alike.
        order = (False, True, True, False) if rnd % 2 == 0 else (True, False, False, True)
        for name, body in bodies.items():
            for col, lib, rate in arms:
                off = on = 0.0
                for hooked in order:
                    if hooked and lib is not None:
                        lib.start(rate, max_frames=args.frames)
                    if warm[name]:  # untimed, hooks as in the block: see --warm
                        _block(body, warm[name], clock)
                    elapsed = _block(body, calls[name], clock)
                    if hooked and lib is not None:
                        samples[col] = samples.get(col, 0) + lib.totals().sampled_count
                        lib.stop()
                    if hooked:
                        on += elapsed
                    else:
                        off += elapsed
                ratios[col].setdefault(name, []).append(off / on)
    shim.unload()
    json.dump({"calls": calls, "ratios": ratios, "samples": samples}, sys.stdout)
    return 0


# --- the controller (the repository's venv) ------------------------------------------


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def summarise(ratios: dict[str, list[float]]) -> tuple[float, float, float]:
    """Geometric mean over workloads, and a 95 % interval from the per-round means."""
    workloads = sorted(ratios)
    rounds = min(len(ratios[w]) for w in workloads)
    per_round = [math.log(geomean([ratios[w][i] for w in workloads])) for i in range(rounds)]
    mean = statistics.fmean(per_round)
    half = 1.96 * statistics.stdev(per_round) / math.sqrt(rounds) if rounds > 1 else math.nan
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def render(label: str, result: dict[str, Any], rounds: int, block: float, warm: float) -> str:
    warm_text = f" each after {warm:.0%} of it untimed" if warm > 0 else ""
    cols = list(result["ratios"])
    workloads = sorted(next(iter(result["ratios"].values())))
    lines = [
        f"== {label}: throughput hooks on / off, paired ABBA/BAAB blocks of "
        f"~{block * 1000:.0f} ms{warm_text}, {rounds} rounds (1.000 = no slowdown) ==",
        f"{'rate':14s}" + "".join(f"{c:>13s}" for c in cols),
    ]
    for w in workloads:
        cells = "".join(f"{geomean(result['ratios'][c][w]):13.3f}" for c in cols)
        lines.append(f"{w:14s}{cells}")
    sums = {c: summarise(result["ratios"][c]) for c in cols}
    lines.append(f"{'geomean':14s}" + "".join(f"{sums[c][0]:13.3f}" for c in cols))
    lines.append(
        f"{'95% interval':14s}"
        + "".join(f"{f'{lo:.3f}-{hi:.3f}':>13s}" for _, lo, hi in (sums[c] for c in cols))
    )
    lines.append(
        f"{'samples':14s}" + "".join(f"{result['samples'].get(c, 0):13d}" for c in cols)
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--interpreters", default="3.11,3.14")
    parser.add_argument("--rates", default="0,64KiB,512KiB", help="comma-separated rates")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=float, default=0.04, help="seconds per block")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument(
        "--warm",
        type=float,
        default=0.0,
        help="before each block, run this fraction of it untimed (the shim already started):"
        " a long session's stacks are interned once, a fresh shim interns them all again",
    )
    parser.add_argument("--workloads", default="")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--shim", default="", help="library to load (default: the built one)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time blocks by the wall clock, or by the process's CPU time (which a loaded"
        " machine's scheduling leaves out: time waiting for a core is not counted)",
    )
    parser.add_argument("--base", default="", help="another build of the shim to compare")
    parser.add_argument(
        "--forward",
        action="store_true",
        help="add a column for the shim built to only forward (see hook_floor.py)",
    )
    parser.add_argument("--forward-shim", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bench-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    sys.path.insert(0, str(ROOT / "tests"))
    from harness import log, pick_interpreters  # noqa: PLC0415
    from hook_floor import build_forwarding_shim  # noqa: PLC0415
    from overhead import WORKLOADS, provision_pyperformance  # noqa: PLC0415

    from heapspy.units import parse_size  # noqa: PLC0415

    rates = ",".join(str(parse_size(r, "rate")) for r in args.rates.split(",") if r.strip())
    site, bench_dir = provision_pyperformance(ROOT / ".cache" / "bench")
    workloads = args.workloads or ",".join(WORKLOADS)
    results = {}
    t0 = time.monotonic()
    tmp = tempfile.TemporaryDirectory(prefix="heapspy-shim-overhead-")
    forward = str(build_forwarding_shim(Path(tmp.name))) if args.forward else ""
    for interp in pick_interpreters(args.interpreters.split(",")):
        log(f"{interp.label}: {args.rounds} rounds of {workloads.count(',') + 1} workloads")
        proc = subprocess.run(
            interp.command(
                str(Path(__file__).resolve()), "--child", "--bench-dir", str(bench_dir),
                "--rates", rates, "--rounds", str(args.rounds), "--block",
                str(args.block), "--frames", str(args.frames), "--workloads", workloads,
                "--shim", args.shim, "--base", args.base, "--warm", str(args.warm),
                "--clock", args.clock,
                "--forward-shim", forward,
            ),
            env=dict(os.environ, PYTHONPATH=str(site)),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            print(f"== {interp.label}: failed\n{proc.stderr[-2000:]}", flush=True)
            continue
        for line in proc.stdout.splitlines()[:-1]:
            log(f"{interp.label}: {line}")
        result = json.loads(proc.stdout.splitlines()[-1])
        results[interp.label] = result
        print(render(interp.label, result, args.rounds, args.block, args.warm) + "\n", flush=True)
    tmp.cleanup()
    print(f"done in {time.monotonic() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
