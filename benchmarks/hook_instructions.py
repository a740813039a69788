"""Where the shim's cost goes, counted in instructions and cache misses instead of time.

    .venv/bin/python benchmarks/hook_instructions.py [--interpreters 3.14,3.11]
        [--iterations 10] [--workloads deltablue,json_loads,chaos,xml_etree]

Why: ``shim_overhead.py`` measures throughput, which on this VM swings by about a
percent between runs, and ``hook_floor.py`` measures a tight loop, which keeps every
cache line hot; the two disagree on how the shim's cost splits between merely having a
hook and what our hooks do. Valgrind's cachegrind counts, deterministically, the
instructions executed and the simulated first-level data-cache misses, per function.
Each mode runs in its own process under cachegrind: the same pyperformance bodies
(``overhead_driver.py``), warmed up once, then ``--iterations`` rounds with no hook, with
the shim built ``-DHS_FORWARD_ONLY`` (hooks that only call the previous allocator), the
shim at rate 0 (exact totals only) and at 512 KiB.

Printed per interpreter: instructions and D1 misses over no hook, in percent of the
whole run (warm-up and set-up included, so the percentages are a floor), and per
allocator call (malloc, calloc, realloc and free, as counted by the shim itself) for
our three hot hooks (hs_realloc per realloc of a block; realloc(NULL) is counted as an
allocation). Needs ``valgrind`` (Debian: ``apt-get install valgrind``); about a
minute and a half per mode on 3.14 with the defaults.

Latest figures (2026-12-03, after realloc's fast path and the one-compare countdown;
``--interpreters 3.14,3.11 --workloads json_dumps,json_loads,deepcopy,pprint``): 3.14
hs_malloc 16.1 instructions per call, hs_free 15.0, hs_realloc 34.9; whole run over no
hook +2.63 % at rate 0, +2.60 % at 512 KiB, forwarding alone +1.44 %. 3.11 hs_malloc
15.3, hs_free 15.0; +2.36 % / +2.47 %. The README's benchmark table keeps the history.

Earlier figures (defaults; two runs differ by ~0.3 %: addresses and hash
seeds vary): 3.14 — the forwarding hook adds 1.0–1.2 % of the instructions (the LTO
build's inlined pymalloc becomes an indirect call), the shim 0.7–1.2 % more at rate 0 or
512 KiB: hs_malloc runs 16 instructions per call, hs_free 12, and 12 % of frees miss the
first-level cache on the pointer-map probe (D1 misses +2.6 % over no hook, forwarding
-0.5 %). 3.11 — forwarding +0.4 %, the shim +1.2–1.4 %, frees missing 14 %. Instruction
counts put our hooks' own work at about 1 % of the run on both versions; on 3.14
throughput drops ~2 % from the forwarding hook to the shim (``shim_overhead.py
--forward``), more than the instructions explain: the rest lies outside what cachegrind
models (branch prediction, the indirect calls). Not a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODES = ("none", "forward", "rate 0", "512 KiB")
HOT = ("hs_malloc", "hs_free", "hs_realloc")


def child(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT / "agent"))
    sys.path.insert(0, str(HERE))
    import overhead_driver  # noqa: PLC0415
    from heapspy_agent.shim import Shim  # noqa: PLC0415

    bodies = overhead_driver.prepare(args.bench_dir, args.workloads.split(","))
    for body in bodies.values():  # warm: caches filled, code objects interned
        body()
    shim = None
    if args.mode == "forward":
        Shim.load(args.forward_shim).start(0, max_frames=64)
    elif args.mode != "none":
        shim = Shim.load(None)
        shim.start(0 if args.mode == "rate 0" else 512 * 1024, max_frames=64)
    for _ in range(args.iterations):
        for body in bodies.values():
            body()
    calls = {"hs_malloc": 0, "hs_free": 0, "hs_realloc": 0}
    if shim is not None:  # mallocs, callocs and reallocs all count as allocations
        t = shim.totals()
        calls["hs_malloc"] = sum(d.alloc_count - d.realloc_count for d in (t.mem, t.obj))
        calls["hs_free"] = sum(d.free_count - d.realloc_count for d in (t.mem, t.obj))
        calls["hs_realloc"] = sum(d.realloc_count for d in (t.mem, t.obj))  # not of NULL
    print(json.dumps(calls), flush=True)
    # Leave without finalizing, in every mode alike: the interpreter's teardown frees
    # tens of thousands of blocks through the hooks after the counts above were read
    # (105,258 hs_free calls against 25,581 counted on 3.11), which made the per-call
    # figures four times too high.
    os._exit(0)


def _counts(out_file: Path) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
    """(program totals, per hot function) of Ir and D1 misses from a cachegrind file."""
    events: list[str] = []
    per_fn: dict[str, dict[str, int]] = {}
    totals: dict[str, int] = {}
    fn = ""
    for line in out_file.read_text().splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("fn="):
            fn = line[3:]
        elif line.startswith("summary:"):
            totals = dict(zip(events, map(int, line.split()[1:])))
        elif fn in HOT and line[:1].isdigit():
            values = dict(zip(events, map(int, line.split()[1:])))
            acc = per_fn.setdefault(fn, {})
            for key, value in values.items():
                acc[key] = acc.get(key, 0) + value
    pick = ("Ir", "D1mr", "D1mw")
    return {k: totals.get(k, 0) for k in pick}, {
        f: {k: v.get(k, 0) for k in pick} for f, v in per_fn.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--interpreters", default="3.14,3.11")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--workloads", default="deltablue,json_loads,chaos,xml_etree")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--bench-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--forward-shim", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind is needed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2

    sys.path.insert(0, str(HERE))
    from harness import log, pick_interpreters  # noqa: PLC0415
    from hook_floor import build_forwarding_shim  # noqa: PLC0415
    from overhead import provision_pyperformance  # noqa: PLC0415

    site, bench_dir = provision_pyperformance(ROOT / ".cache" / "bench")
    with tempfile.TemporaryDirectory(prefix="heapspy-hook-instructions-") as tmp:
        forward = build_forwarding_shim(Path(tmp))
        for interp in pick_interpreters(args.interpreters.split(",")):
            rows = {}
            for mode in MODES:
                log(f"{interp.label}: {mode} under cachegrind")
                out_file = Path(tmp) / f"cg-{interp.label}-{mode.replace(' ', '')}"
                proc = subprocess.run(
                    [valgrind, "--tool=cachegrind", "--cache-sim=yes", "--trace-children=yes",
                     f"--cachegrind-out-file={out_file}",
                     *interp.command(
                         str(Path(__file__).resolve()), "--child", "--mode", mode,
                         "--bench-dir", str(bench_dir), "--forward-shim", str(forward),
                         "--iterations", str(args.iterations), "--workloads", args.workloads,
                     )],
                    env=dict(os.environ, PYTHONPATH=str(site)),
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                found = re.findall(r"^\{.*\}$", proc.stdout, re.M)
                if proc.returncode != 0 or not found:
                    log(f"  failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
                    break
                rows[mode] = (*_counts(out_file), json.loads(found[-1]))
            if len(rows) != len(MODES):
                continue
            base = rows["none"][0]
            print(f"\n{interp.label} ({args.iterations} rounds of {args.workloads})")
            print(f"  {'mode':<8} {'instructions':>15} {'extra':>7} {'D1 misses':>12} {'extra':>7}")
            for mode, (tot, _hot, _calls) in rows.items():
                misses, base_misses = tot["D1mr"] + tot["D1mw"], base["D1mr"] + base["D1mw"]
                print(
                    f"  {mode:<8} {tot['Ir']:>15,} {100 * (tot['Ir'] / base['Ir'] - 1):>+6.2f}%"
                    f" {misses:>12,} {100 * (misses / base_misses - 1):>+6.2f}%"
                )
            for mode in ("rate 0", "512 KiB"):
                _tot, hot, calls = rows[mode]
                parts = []
                for fn in HOT:
                    c, n = hot.get(fn, {}), max(calls[fn], 1)
                    parts.append(
                        f"{fn} {c.get('Ir', 0) / n:.1f} instructions, "
                        f"{(c.get('D1mr', 0) + c.get('D1mw', 0)) / n:.3f} D1 misses "
                        f"({calls[fn]:,} calls)"
                    )
                print(f"  {mode}, per call: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
