"""How close heapspy's live-byte estimates per function come to the truth.

    .venv/bin/python benchmarks/accuracy.py [--runs 10] [--rates 64KiB,512KiB]
        [--exact-runs 1] [--interpreters 3.11,3.14] [--mib 64] [--cases ...] [--json FILE]

Each run starts ``benchmarks/targets/accuracy_target.py``, attaches with
``Session.attach`` (``final_dump=False``, 0.5 s interval), lets the target build what it
retains (it waits for the agent first, so every retained byte is allocated under
heapspy) and reads the per-function live-byte estimates once two samples have arrived
after the target said it was done. A site belongs to the nearest frame, walking from
the leaf to the root, whose function is one of the target's retaining functions (the
leaf may be a helper such as NumPy's ``full``); sites under none of them are "other".

The five retaining functions, MIB MiB each: ``large_blocks`` (1 MiB bytearrays),
``medium_blocks`` (bytes of 1-16 KiB), ``small_objects`` (bytes, str, tuples of 40-400
bytes), ``appended_lists`` (lists grown by append to 16-16384 items) and
``numpy_arrays`` (float64 arrays of 4 KiB-1 MiB). Truth is computed in the target:
``sys.getsizeof`` of every retained object and of the list holding them, i.e. what
Python's allocators were asked for (headers, GC headers, buffers and list
over-allocation included). The exact runs (rate 1, tracemalloc) check that definition:
tracemalloc records requested sizes. What the allocators hand out is a bit more (pymalloc
rounds to 16 bytes, glibc adds a chunk header, mmap rounds to pages): the "held" column
estimates that from the block sizes.

Figures are est/truth - 1, mean and standard deviation over runs, with the sampling noise
one run should show given the block sizes (``sigma``: a block of s bytes is sampled with
probability p = 1 - exp(-s/rate) and weighs 1/p, so the variance is sum s^2 (1-p)/p).
``bias z`` is the mean in units of its standard error (sigma / sqrt(runs)): an unbiased
estimate keeps it within about +-2. ``P(in)`` is the chance that one run lands within
+-10 % given sigma: for blocks much smaller than the rate sigma is about
sqrt(rate / retained bytes), 8.8 % for 64 MiB at 512 KiB. ``in 95% CI`` is calibration
(issue 12): in how many runs the truth lay inside the +-95 % interval that run itself
reported, computed as heapspy's reports compute it from each site's own upscaled
figures (``heapspy.scaling.sampling_variance``, summed over the sites under the
function); about 19 runs in 20 when the error bars are honest.
A NumPy array's data buffer is allocated by NumPy's allocator handler, outside Python's
allocator domains; sampled mode sees it through the shim's hook on NumPy's default
handler, exact mode through NumPy's ``PyTraceMalloc_Track`` reports. numpy is installed
with pip into ``.cache/bench/`` for each interpreter; where no wheel exists the case is
skipped, saying so.

Goal (issue 3): within +-10 % for every function holding >= 50 MiB at the default rate.
Prints figures; this is not a timed test. The default run takes about 6 minutes, half of
it in the exact run on 3.11 (tracemalloc snapshots of ~350k blocks are slow there).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness import Target, log, pick_interpreters, stream  # noqa: E402
from interpreters import Interpreter, install_numpy  # noqa: E402

import heapspy.channel  # noqa: E402
from heapspy.config import AttachConfig  # noqa: E402
from heapspy.model import Stack  # noqa: E402
from heapspy.scaling import Z_95, sampling_variance  # noqa: E402
from heapspy.session import Session  # noqa: E402
from heapspy.units import parse_size  # noqa: E402

TARGET = Path(__file__).resolve().parent / "targets" / "accuracy_target.py"
CASES = ("large_blocks", "medium_blocks", "small_objects", "appended_lists", "numpy_arrays")
OTHER = "(other)"
GOAL = 0.10
GOAL_MIB = 50
MMAP_THRESHOLD = 128 * 1024  # glibc's initial one; assumed not raised in the target


# --- one run ------------------------------------------------------------------------


@dataclass
class Run:
    rate: int
    mode: str
    seconds: float  # wall time of the whole run, target start to exit
    build: float  # seconds the target took to build what it retains
    truth: dict[str, dict[str, Any]]
    estimate: dict[str, float] = field(default_factory=dict)
    # variance of each estimate as heapspy's reports compute it from the sites' own figures
    # (heapspy.scaling.sampling_variance summed over the sites): their +-95 % intervals
    variance: dict[str, float] = field(default_factory=dict)
    totals: dict[str, Any] = field(default_factory=dict)


def attribute(stack: Stack, cases: set[str]) -> str:
    for frame in reversed(stack):  # leaf first
        if frame.function in cases:
            return frame.function
    return OTHER


def run_once(
    interp: Interpreter, rate: int, cases: list[str], mib: float, env: dict[str, str], work: Path
) -> Run:
    t0 = time.monotonic()
    target = Target(interp.command(str(TARGET), ",".join(cases), str(mib)), env)
    try:
        if target.line("READY", 60) is None:
            raise target.failure("the target did not start")
        # Exact mode snapshots a few hundred thousand traces per interval: give it room.
        interval = 0.5 if rate != 1 else 5.0
        config = AttachConfig(rate=rate, final_dump=False, dump_dir=work, interval=interval)
        session = Session.attach(target.proc.pid, config)
        try:
            target.send("go\n")  # the agent's hooks are in place once attach returned
            done = None
            deadline = time.monotonic() + 600
            while done is None and time.monotonic() < deadline:
                stream(session, target)
                try:
                    text = target.lines.get_nowait()
                except queue.Empty:
                    continue
                if text.startswith("DONE "):
                    done = json.loads(text[5:])
            if done is None:
                raise target.failure("the target did not finish building")
            agg = session.aggregator
            wanted = agg.intervals + 2  # two samples taken wholly after the build
            while agg.intervals < wanted and time.monotonic() < deadline:
                stream(session, target)
            names = set(cases)
            estimate: dict[str, float] = dict.fromkeys([*cases, OTHER], 0.0)
            variance: dict[str, float] = dict.fromkeys([*cases, OTHER], 0.0)
            for site in agg.sites.values():
                objs, nbytes = site.live(agg.sampling.period)
                case = attribute(site.stack, names)
                estimate[case] += nbytes
                variance[case] += sampling_variance(objs, nbytes, agg.sampling.period)[1]
            run = Run(rate, agg.sampling.mode, 0.0, float(done["build_s"]), done["truth"], estimate)
            run.variance = variance
            run.totals = dict(agg.totals)
        finally:
            session.detach()
    finally:
        target.close()
    run.seconds = time.monotonic() - t0
    return run


# --- figures ------------------------------------------------------------------------


def sampling_sigma(blocks: list[list[int]], rate: int) -> float:
    """Relative standard deviation of one run's estimate from the sampling alone."""
    if rate <= 1:
        return 0.0
    total = sum(s * n for s, n in blocks)
    # n blocks of one size: exactly the per-stack variance heapspy reports use
    var = sum(sampling_variance(n, n * size, rate)[1] for size, n in blocks)
    return math.sqrt(var) / total if total else 0.0


def held(blocks: list[list[int]]) -> float:
    """Bytes the allocators hand out for these requests (pymalloc, glibc, mmap)."""
    out = 0
    for size, n in blocks:
        if size <= 512:
            out += n * ((size + 15) // 16 * 16)
        elif size + 8 >= MMAP_THRESHOLD:
            out += n * ((size + 16 + 4095) // 4096 * 4096)
        else:
            out += n * max(32, (size + 8 + 15) // 16 * 16)
    return out


def rows(runs: list[Run]) -> list[str]:
    return [*runs[0].truth, OTHER]


def pct(x: float) -> str:
    return f"{x * 100:+.1f}%"


def sampled_table(runs: list[Run]) -> tuple[str, list[dict[str, Any]]]:
    rate = runs[0].rate
    head = (
        f"  {'function':<22}{'truth MiB':>10}{'mean':>9}{'sd':>7}{'min':>9}{'max':>9}"
        f"{'sigma':>8}{'bias z':>8}{'in +-10%':>10}{'P(in)':>7}{'in 95% CI':>11}"
    )
    lines = [head]
    figures = []
    for name in rows(runs):
        if name == OTHER:
            est = [r.estimate[OTHER] / 2**20 for r in runs]
            lines.append(
                f"  {OTHER:<22}{'-':>10}  (not under any retaining function: "
                f"{statistics.mean(est):.2f} MiB on average)"
            )
            continue
        truth = statistics.mean(r.truth[name]["bytes"] for r in runs)
        errs = [r.estimate[name] / r.truth[name]["bytes"] - 1 for r in runs]
        sigma = sampling_sigma(runs[0].truth[name]["blocks"], rate)
        mean = statistics.mean(errs)
        sigma_text = f"{sigma * 100:.1f}%"
        z_text = f"{mean / (sigma / math.sqrt(len(errs))):+.1f}" if sigma else "-"
        p_in = math.erf(GOAL / (sigma * math.sqrt(2))) if sigma else 1.0
        inside = sum(abs(e) <= GOAL for e in errs)
        # calibration: truth inside the interval the run itself reported (+-1.96 sd)
        covered = sum(
            abs(r.estimate[name] - r.truth[name]["bytes"]) <= Z_95 * math.sqrt(r.variance[name])
            for r in runs
            if r.variance
        )
        sd = statistics.stdev(errs) if len(errs) > 1 else 0.0
        lines.append(
            f"  {name:<22}{truth / 2**20:>10.1f}{pct(mean):>9}"
            f"{sd * 100:>6.1f}%{pct(min(errs)):>9}{pct(max(errs)):>9}{sigma_text:>8}"
            f"{z_text:>8}{f'{inside}/{len(errs)}':>10}{p_in * 100:>6.0f}%"
            f"{f'{covered}/{len(errs)}':>11}"
        )
        figures.append(
            {
                "function": name,
                "truth_bytes": truth,
                "errors": errs,
                "sigma": sigma,
                "within_goal": inside,
                "within_reported_95": covered,
            }
        )
    return "\n".join(lines), figures


def exact_table(runs: list[Run]) -> tuple[str, list[dict[str, Any]]]:
    lines = [
        f"  {'function':<22}{'truth MiB':>10}{'tracemalloc':>12}{'est/truth-1':>13}"
        f"{'held/truth-1':>14}"
    ]
    figures = []
    for name in rows(runs):
        if name == OTHER:
            est = statistics.mean(r.estimate[OTHER] for r in runs)
            lines.append(f"  {OTHER:<22}{'-':>10}{est / 2**20:>11.2f}M")
            continue
        t = runs[0].truth[name]
        truth = statistics.mean(r.truth[name]["bytes"] for r in runs)
        est = statistics.mean(r.estimate[name] for r in runs)
        h = held(t["blocks"]) / t["bytes"] - 1
        lines.append(
            f"  {name:<22}{truth / 2**20:>10.2f}{est / 2**20:>11.2f}M{pct(est / truth - 1):>13}"
            f"{pct(h):>14}"
        )
        figures.append({"function": name, "truth_bytes": truth, "estimate_bytes": est, "held": h})
    return "\n".join(lines), figures


def report(label: str, rate: int, runs: list[Run]) -> dict[str, Any]:
    modes = sorted({r.mode for r in runs})
    secs = [r.seconds for r in runs]
    builds = [r.build for r in runs]
    rate_text = "1 (exact)" if rate == 1 else f"{rate // 1024} KiB"
    print(
        f"\n{label}  rate {rate_text}  mode {'/'.join(modes)}  {len(runs)} run(s), "
        f"{statistics.mean(secs):.1f} s each (target build {statistics.mean(builds):.1f} s)"
    )
    dropped = sum(int(r.totals.get("dropped_samples", 0) or 0) for r in runs)
    overflow = sum(int(r.totals.get("overflow_samples", 0) or 0) for r in runs)
    if dropped or overflow:
        print(f"  (samples dropped: {dropped}, overflowed: {overflow})")
    text, figures = (exact_table if rate == 1 else sampled_table)(runs)
    print(text, flush=True)
    return {"interpreter": label, "rate": rate, "modes": modes, "seconds": secs, "rows": figures}


def goal_lines(results: list[dict[str, Any]], default_rate: int) -> list[str]:
    out = []
    for res in results:
        if res["rate"] != default_rate:
            continue
        for row in res["rows"]:
            if row["truth_bytes"] < GOAL_MIB * 2**20 or "errors" not in row:
                continue
            worst = max(row["errors"], key=abs)
            ok = row["within_goal"] == len(row["errors"])
            note = ""
            if row["sigma"] is None:
                note = "  (data buffers invisible to the shim: expected)"
            elif not ok:
                note = f"  (sampling sigma {row['sigma'] * 100:.1f}% per run)"
            out.append(
                f"  {'ok  ' if ok else 'MISS'} {res['interpreter']:<14}{row['function']:<22}"
                f"{row['within_goal']}/{len(row['errors'])} runs within +-10%, "
                f"worst {pct(worst)}{note}"
            )
    return out


# --- main ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(__doc__ or "").split("\n\n", 2)[-1],
    )
    parser.add_argument("--runs", type=int, default=10, help="runs per sampling rate")
    parser.add_argument("--rates", default="64KiB,512KiB", help="sampling rates, bytes")
    parser.add_argument("--exact-runs", type=int, default=1, help="runs at rate 1 (0: none)")
    parser.add_argument("--interpreters", default="3.11,3.14", help="labels or versions")
    parser.add_argument("--mib", type=float, default=64, help="MiB retained per function")
    parser.add_argument("--cases", default=",".join(CASES), help="retaining functions to run")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "bench")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    args.rates = [parse_size(r, "rate") for r in args.rates.split(",") if r.strip()]
    if args.exact_runs:
        args.rates.append(1)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {', '.join(unknown)} (known: {', '.join(CASES)})")
    args.interpreters = [i.strip() for i in args.interpreters.split(",") if i.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cache = args.cache_dir.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="heapspy-accuracy-"))
    os.environ.setdefault("HEAPSPY_RUNTIME_DIR", str(work / "run"))
    # Exact mode keeps the agent busy (and silent) for seconds while it snapshots.
    heapspy.channel.AGENT_TIMEOUT = max(heapspy.channel.AGENT_TIMEOUT, 60.0)
    print(
        f"heapspy accuracy: {args.mib:g} MiB per function, {args.runs} run(s) per rate, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    results = []
    t_all = time.monotonic()
    for interp in pick_interpreters(args.interpreters):
        cases = list(args.cases)
        env = dict(os.environ)
        if "numpy_arrays" in cases:
            site, why = install_numpy(interp.version, cache)
            if site is None:
                print(f"{interp.label}: skipping numpy_arrays: {why}", flush=True)
                cases.remove("numpy_arrays")
            else:
                env["PYTHONPATH"] = str(site)
        for rate in args.rates:
            n = args.exact_runs if rate == 1 else args.runs
            runs = []
            for i in range(n):
                log(f"{interp.label}: rate {rate}, run {i + 1}/{n}")
                runs.append(run_once(interp, rate, cases, args.mib, env, work))
            results.append(report(interp.label, rate, runs))
    default = AttachConfig().rate
    print(f"\nGoal: within +-10 % at the default rate ({default // 1024} KiB) for >= 50 MiB:")
    print("\n".join(goal_lines(results, default)))
    print(f"\ntotal time {time.monotonic() - t_all:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
