"""What installing any allocator hook costs, next to what heapspy's hooks cost.

    .venv/bin/python benchmarks/hook_floor.py [--interpreters 3.11,3.14] [--rounds 5]

Why: on Debian's CPython 3.14 (an LTO/PGO build, like python.org's and the Docker
images') the shim costs ~3 % on allocation-heavy workloads (``shim_overhead.py``),
while on 3.11 it costs ~1.5 %. The question is how much of that is our hooks' own work
(counting, the sampling countdown, the free-side probe of the pointer map) and how much
is the mere presence of a hook: the optimised build reaches pymalloc through
``PyObject_Malloc`` without an indirect call only while no hook is installed.

A tight loop of small allocations and frees (``object()``, ``bytes(40)``,
``bytes(100)``: four alloc/free pairs per iteration) runs in one process per
interpreter with: no hook; the shim built with ``-DHS_FORWARD_ONLY`` (hooks that only
call the previous allocator); the real shim at rate 0 (totals only); the real shim at
the default 512 KiB. Modes alternate, each repeated, and the best (least disturbed) time
per mode is kept: this VM's speed swings are slow and only ever slow a run down.
Printed: nanoseconds per alloc/free pair and the extra over no hook. Not a timed test.

Figures from this machine (default options): 3.14 — no hook 32.3 ns, forwarding 35.9
(+3.6), rate 0 36.6 (+4.4), 512 KiB 36.9 (+4.6): a hook that does nothing is ~80 % of
the cost (another run: 90 %); 3.11 — no hook 62.7, forwarding 63.6, rate 0 64.6,
512 KiB 62.7: all within ~2 ns, which is this loop's noise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODES = ("none", "forward", "rate 0", "512 KiB")
PAIRS = 4  # alloc/free pairs per loop iteration


def child(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(ROOT / "agent"))
    from heapspy_agent.shim import Shim  # noqa: PLC0415 - only inside the measured one

    shims = {"forward": Shim.load(args.forward_shim)}
    real = Shim.load(None)  # two libraries: the forwarding one has its own file name
    rates = {"forward": 0, "rate 0": 0, "512 KiB": 512 * 1024}

    def loop(n: int) -> float:
        o, b = object, bytes
        t0 = time.perf_counter()
        for _ in range(n):
            o()
            o()
            b(40)
            b(100)
        return time.perf_counter() - t0

    n = args.iterations
    best = dict.fromkeys(MODES, float("inf"))
    for _ in range(args.rounds):
        for mode in MODES:
            shim = shims.get(mode, real)
            for _ in range(args.repeat):
                if mode != "none":
                    shim.start(rates[mode], max_frames=64)
                elapsed = loop(n)
                if mode != "none":
                    shim.stop()
                best[mode] = min(best[mode], elapsed)
    json.dump({m: t / n / PAIRS * 1e9 for m, t in best.items()}, sys.stdout)
    return 0


def build_forwarding_shim(out: Path) -> Path:
    """Compile Cargo-free/*.c with -DHS_FORWARD_ONLY, as setup.py builds them."""
    so = out / "heapspy_shim_forward.so"
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    subprocess.run(
        [*cc.split(), "-O2", "-std=gnu11", "-fvisibility=hidden", "-shared", "-fPIC",
         "-DHS_FORWARD_ONLY", "-I", str(ROOT / "Cargo-free"),
         *sorted(str(p) for p in (ROOT / "Cargo-free").glob("*.c")),
         "-o", str(so), "-lm", "-ldl"],
        check=True,
    )  # fmt: skip
    return so


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--interpreters", default="3.11,3.14")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5, help="runs per mode and round")
    parser.add_argument("--iterations", type=int, default=300_000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--forward-shim", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    sys.path.insert(0, str(ROOT / "tests"))
    from harness import log, pick_interpreters  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="heapspy-hook-floor-") as tmp:
        forward = build_forwarding_shim(Path(tmp))
        for interp in pick_interpreters(args.interpreters.split(",")):
            log(f"{interp.label}: {args.rounds} rounds")
            proc = subprocess.run(
                interp.command(
                    str(Path(__file__).resolve()), "--child", "--forward-shim", str(forward),
                    "--rounds", str(args.rounds), "--repeat", str(args.repeat),
                    "--iterations", str(args.iterations),
                ),
                capture_output=True,
                text=True,
                check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                print(f"== {interp.label}: failed\n{proc.stderr[-2000:]}", flush=True)
                continue
            ns = json.loads(proc.stdout.splitlines()[-1])
            base = ns["none"]
            print(f"== {interp.label}: ns per alloc/free pair (best of {args.rounds} rounds)")
            for mode in MODES:
                extra = f"  (+{ns[mode] - base:.1f} ns)" if mode != "none" else ""
                print(f"  {mode:10s}{ns[mode]:8.1f}{extra}")
            hooked = ns["512 KiB"] - base
            if hooked >= 2.0:  # below that, the differences are this loop's noise
                share = (ns["forward"] - base) / hooked
                print(f"  a hook that only forwards is {share:.0%} of the 512 KiB hooks' cost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
